import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createReadStream } from 'node:fs';
import net from 'node:net';

/**
 * A minimal Redis *master* that serves one file as a full resync, so that a real Redis told
 * `REPLICAOF` this address loads it the way it loads any master's data: it writes the whole
 * payload to a temp file first (repl-diskless-load disabled), renames it over its dump file,
 * then flushes and loads it — and, with AOF on, rewrites its AOF from the loaded data.
 *
 * It answers the replica handshake (PING, AUTH, REPLCONF …, PSYNC/SYNC) and nothing else. It
 * serves only a client that authenticates with `token` (set as the target's masterauth for
 * the restore), so no other local process can pull the backup's data from the port. It serves
 * one transfer: a replica that drops it failed, and is not fed again.
 */
export class SyncSource {
  readonly replid = randomBytes(20).toString('hex');
  readonly #file: string;
  readonly #bytes: number;
  readonly #token: Buffer;
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  #syncs = 0;
  #sent = false;
  #failure: string | undefined;

  constructor(options: { file: string; bytes: number; token: string }) {
    this.#file = options.file;
    this.#bytes = options.bytes;
    this.#token = Buffer.from(options.token);
    this.#server = net.createServer((socket) => this.#serve(socket));
  }

  /** Listens on `host` (an address the target reaches this host by) and an ephemeral port. */
  async listen(host: string): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host, port: 0, exclusive: true }, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    const address = this.#server.address() as net.AddressInfo;
    return { host: address.address, port: address.port };
  }

  /** True once an authenticated replica asked for the data. */
  get started(): boolean {
    return this.#syncs > 0;
  }

  /** True once every byte of the payload has been handed to the replica's socket. */
  get sent(): boolean {
    return this.#sent;
  }

  /** Why the transfer failed: the replica dropped the link, or asked for a second transfer. Only meaningful until the target reports the link up. */
  get failure(): string | undefined {
    return this.#failure;
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #serve(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.setNoDelay(true);
    let buffer: Buffer = Buffer.alloc(0);
    let authenticated = false;
    let syncing = false;
    socket.on('data', (chunk: Buffer) => {
      if (syncing) return; // REPLCONF ACK and the like: a master never answers them
      buffer = buffer.length ? Buffer.concat([buffer, chunk]) : chunk;
      if (buffer.length > MAX_COMMAND_BYTES) return socket.destroy(); // not a replica's handshake
      for (;;) {
        const parsed = parseCommand(buffer);
        if (!parsed) break;
        buffer = buffer.subarray(parsed.consumed);
        const [name = '', ...args] = parsed.args;
        switch (name.toString('latin1').toUpperCase()) {
          case 'PING':
            socket.write('+PONG\r\n');
            break;
          case 'AUTH': {
            const given = args.at(-1) ?? Buffer.alloc(0);
            authenticated = given.length === this.#token.length && timingSafeEqual(given, this.#token);
            socket.write(authenticated ? '+OK\r\n' : '-WRONGPASS invalid username-password pair\r\n');
            break;
          }
          case 'REPLCONF':
            socket.write(authenticated ? '+OK\r\n' : '-NOAUTH Authentication required.\r\n');
            break;
          case 'PSYNC':
          case 'SYNC':
            if (!authenticated) {
              socket.write('-NOAUTH Authentication required.\r\n');
              break;
            }
            syncing = true;
            this.#sync(socket, name.toString('latin1').toUpperCase() === 'PSYNC');
            return;
          default:
            socket.write(`-ERR storage-agent restore source: unexpected command\r\n`);
        }
      }
    });
  }

  #sync(socket: net.Socket, psync: boolean): void {
    this.#syncs += 1;
    if (this.#sent || this.#syncs > 1) {
      // The replica connected again: it dropped or failed to load the first transfer.
      this.#failure ??= 'the target broke off the transfer and asked for a new one';
      socket.end('-ERR storage-agent restore source: one transfer only\r\n');
      return;
    }
    if (psync) socket.write(`+FULLRESYNC ${this.replid} 0\r\n`);
    socket.write(`$${this.#bytes}\r\n`);
    const file = createReadStream(this.#file, { highWaterMark: 1 << 20 });
    let written = 0;
    file.on('data', (chunk) => {
      written += chunk.length;
      if (!socket.write(chunk)) file.pause();
    });
    socket.on('drain', () => file.resume());
    file.on('end', () => {
      if (written === this.#bytes) this.#sent = true;
      else this.#failure ??= `the staged RDB changed size while it was sent (${written} of ${this.#bytes} bytes)`;
    });
    file.on('error', (error) => {
      this.#failure ??= `cannot read the staged RDB: ${error.message}`;
      socket.destroy();
    });
    // A replica that loaded the data keeps this connection as its master link: closing it
    // first means the transfer or the load failed (it would come back for another).
    socket.on('close', () => {
      file.destroy();
      this.#failure ??= 'the target closed the replication link before it had loaded the RDB';
    });
  }
}

/** A replica's handshake commands are tiny: anything larger is not one. */
const MAX_COMMAND_BYTES = 64 * 1024;

/** One RESP multibulk (`*N\r\n$len\r\n…`) or inline command from the start of `buffer`. */
function parseCommand(buffer: Buffer): { args: Buffer[]; consumed: number } | undefined {
  const lineEnd = buffer.indexOf('\r\n');
  if (lineEnd < 0) return undefined;
  if (buffer[0] !== 0x2a /* * */) {
    const line = buffer.toString('latin1', 0, lineEnd).trim();
    return { args: line ? line.split(/\s+/).map((a) => Buffer.from(a, 'latin1')) : [], consumed: lineEnd + 2 };
  }
  const count = Number(buffer.toString('latin1', 1, lineEnd));
  let offset = lineEnd + 2;
  const args: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const end = buffer.indexOf('\r\n', offset);
    if (end < 0 || buffer[offset] !== 0x24 /* $ */) return undefined;
    const length = Number(buffer.toString('latin1', offset + 1, end));
    const start = end + 2;
    if (buffer.length < start + length + 2) return undefined;
    args.push(buffer.subarray(start, start + length));
    offset = start + length + 2;
  }
  return { args, consumed: offset };
}
