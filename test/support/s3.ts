import { CreateBucketCommand, ListMultipartUploadsCommand, S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { S3ObjectStore, type S3StoreOptions } from '../../src/transport/stores/s3-store.ts';
import { UploadJournal } from '../../src/transport/stores/upload-journal.ts';
import { s3TestServer } from './servers.ts';

export function s3Client(): S3Client {
  const s3 = s3TestServer();
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
  });
}

/** A new bucket per caller, so tests never see each other's objects. */
export async function createTestBucket(): Promise<string> {
  const bucket = `test-${randomBytes(6).toString('hex')}`;
  await s3Client().send(new CreateBucketCommand({ Bucket: bucket }));
  return bucket;
}

export function createS3Store(bucket: string, stateDir: string, overrides: Partial<S3StoreOptions> = {}): S3ObjectStore {
  const s3 = s3TestServer();
  return new S3ObjectStore({
    name: 'test',
    endpoint: s3.endpoint,
    region: s3.region,
    bucket,
    prefix: 'agent/',
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    forcePathStyle: true,
    partSize: 5 * 1024 * 1024,
    partsInFlight: 4,
    maxParts: 10_000,
    maxAttempts: 3,
    connectTimeout: 5_000,
    requestTimeout: 30_000,
    journal: new UploadJournal(stateDir),
    ...overrides,
  });
}

/** What ListMultipartUploads shows in the bucket: the proof that nothing was left behind. */
export async function multipartUploads(bucket: string): Promise<string[]> {
  const answer = await s3Client().send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  return (answer.Uploads ?? []).map((u) => `${u.Key}:${u.UploadId}`);
}
