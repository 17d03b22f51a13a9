import { createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AgentError, toAgentError } from '../errors.ts';
import { compressionExtension, createDecompressor } from '../snapshot/compression.ts';
import { LengthCheck, VerifyStream } from '../snapshot/digest.ts';
import type { ElementRecord, Manifest } from '../snapshot/manifest.ts';
import { checkName } from '../snapshot/names.ts';
import type { ObjectStore } from '../transport/object-store.ts';
import { readSegmented } from '../transport/segments.ts';

export function findElement(manifest: Manifest, name: string): ElementRecord {
  const found = manifest.elements.find((e) => e.name === checkName('element', name));
  if (!found) {
    throw new AgentError(
      'E_UNKNOWN_ELEMENT',
      `backup ${manifest.id} has no element "${name}"; its elements: ${manifest.elements.map((e) => e.name).join(', ')}`,
      { details: { env: manifest.env, id: manifest.id, element: name } },
    );
  }
  return found;
}

/** The stored bytes of an element, failing at the end unless size and sha256 match the manifest. */
export function readVerified(store: ObjectStore, manifest: Manifest, element: ElementRecord, signal: AbortSignal): Readable {
  const out = new VerifyStream({ bytes: element.storedBytes, sha256: element.sha256, what: `element ${element.name} of backup ${manifest.id}` });
  const source = readSegmented(store, element.objects.map((o) => o.key), signal);
  source.on('error', (error) => out.destroy(error));
  return source.pipe(out);
}

/** The element's raw archive (tar, SQL, RDB), verified and decompressed. */
export function readDecompressed(store: ObjectStore, manifest: Manifest, element: ElementRecord, signal: AbortSignal): Readable {
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  const raw = new LengthCheck(element.rawBytes, `element ${element.name} of backup ${manifest.id}`);
  pipeline(readVerified(store, manifest, element, signal), createDecompressor(element.compression), raw, out, { signal }).catch((error) => {
    out.destroy(decompressError(error, element));
  });
  return out;
}

function decompressError(error: unknown, element: ElementRecord): AgentError {
  const failure = toAgentError(error);
  if (failure.code !== 'E_INTERNAL') return failure;
  return new AgentError('E_ARCHIVE_CORRUPT', `element ${element.name}: cannot decompress (${failure.message}); the stored object is corrupt`, { cause: error });
}

/** The file name `get` writes: `<element>.<format><compression ext>` (db.sql.gz, uploads.tar.zst). */
export function artifactFileName(element: ElementRecord): string {
  return `${element.name}.${element.format}${compressionExtension[element.compression]}`;
}

/**
 * Downloads one element as the standard archive it is stored as, verified; the file appears
 * only when complete (temp + rename). `to` may be a directory or a file path.
 */
export async function downloadElement(store: ObjectStore, manifest: Manifest, element: ElementRecord, to: string, signal: AbortSignal): Promise<{ path: string; bytes: number }> {
  const isDirectory = await stat(to).then((s) => s.isDirectory(), () => false);
  const file = isDirectory ? path.join(to, artifactFileName(element)) : path.resolve(to);
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.partial-${process.pid}`);
  try {
    await pipeline(readVerified(store, manifest, element, signal), createWriteStream(temp, { flags: 'wx', mode: 0o600 }), { signal });
    await rename(temp, file);
  } catch (error) {
    await rm(temp, { force: true });
    throw toAgentError(error, 'E_STORE_IO');
  }
  return { path: file, bytes: element.storedBytes };
}

export interface ElementCheck {
  element: string;
  ok: boolean;
  bytes: number;
  code?: string;
  message?: string;
}

/** Reads back every object of the backup and checks sizes and sha256 against the manifest. */
export async function verifyBackup(store: ObjectStore, manifest: Manifest, signal: AbortSignal): Promise<ElementCheck[]> {
  const checks: ElementCheck[] = [];
  for (const element of manifest.elements) {
    try {
      await pipeline(readVerified(store, manifest, element, signal), new Writable({ write: (_chunk, _encoding, done) => done() }), { signal });
      checks.push({ element: element.name, ok: true, bytes: element.storedBytes });
    } catch (error) {
      const failure = toAgentError(error, 'E_STORE_IO');
      if (failure.code === 'E_CANCELLED') throw failure;
      checks.push({ element: element.name, ok: false, bytes: element.storedBytes, code: failure.code, message: failure.message });
    }
  }
  return checks;
}
