/** ZSTD_COMPRESSBOUND: the largest frame `bytes` of input can compress to (an output buffer this big is filled in one pass). */
export function zstdBound(bytes: number): number {
  const small = 128 << 10;
  return bytes + (bytes >> 8) + (bytes < small ? (small - bytes) >> 11 : 0);
}
