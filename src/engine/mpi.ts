/**
 * The MPI library, called through koffi: loading it, telling Open MPI from MPICH, and the handful of
 * functions data-parallel training needs. Loaded only when a run asks for it (src/dist/index.ts).
 * The binding is here, with ggml's, because nothing above src/engine imports koffi; the communicator
 * built on it is src/dist/mpi-communicator.ts.
 *
 * The two ABIs differ (measured in ../shared/spike-mpi/):
 * - Open MPI: handles (MPI_Comm, MPI_Datatype, MPI_Op, MPI_Request, ...) are pointers, and the
 *   predefined ones are the addresses of exported globals (MPI_COMM_WORLD == &ompi_mpi_comm_world).
 *   MPI_IN_PLACE is (void *)1, MPI_ANY_SOURCE -1, MPI_STATUS_IGNORE NULL; MPI_Status starts with
 *   MPI_SOURCE.
 * - MPICH (and Intel MPI, Cray MPICH, MVAPICH): handles are 32-bit integers with magic values
 *   (MPI_COMM_WORLD == 0x44000000). MPI_IN_PLACE is (void *)-1, MPI_ANY_SOURCE -2,
 *   MPI_STATUS_IGNORE (void *)1; MPI_SOURCE sits at byte 8 of MPI_Status.
 * `MPI_Get_library_version` works before `MPI_Init` and says which one was loaded.
 *
 * Loading a library that does not match the launcher does not fail: every rank silently becomes a
 * job of one. So the launcher's environment picks the library to try first, and the communicator
 * checks the size MPI reports against the launcher's.
 */
import koffi, { type LibraryHandle } from 'koffi';
import { QtuneError } from '../errors.js';

export type MpiImpl = 'openmpi' | 'mpich';

/** A handle value: an address (Open MPI) or a magic integer (MPICH). */
export type Handle = bigint | number;

/** MPI could not be loaded or started: one line naming what to install. Exit code 2. */
export class MpiUnavailableError extends QtuneError {
  override name = 'MpiUnavailableError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('NOT_FOUND', message, options);
  }
}

/** An MPI call returned an error code. */
export class MpiError extends QtuneError {
  override name = 'MpiError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('COMPUTE', message, options);
  }
}

export const INSTALL_HINT = "install Debian's openmpi-bin (or mpich)";

/** The constants of one ABI. */
interface Abi {
  impl: MpiImpl;
  /** koffi type of every handle argument. */
  handle: 'void *' | 'int';
  /** Bytes of an MPI_Request or MPI_Comm variable. */
  handleBytes: 4 | 8;
  COMM_WORLD: Handle;
  FLOAT: Handle;
  DOUBLE: Handle;
  INT: Handle;
  SUM: Handle;
  ERRORS_RETURN: Handle;
  INFO_NULL: Handle;
  COMM_TYPE_SHARED: number;
  IN_PLACE: bigint;
  ANY_SOURCE: number;
  STATUS_IGNORE: bigint;
  /** Byte offset of MPI_SOURCE in MPI_Status. */
  statusSource: number;
}

function openMpiAbi(lib: LibraryHandle): Abi {
  // koffi 3: lib.symbol(name) is the symbol's address as a BigInt, which is what Open MPI's
  // OMPI_PREDEFINED_GLOBAL(type, global) evaluates to
  const sym = (s: string): bigint => lib.symbol(s) as bigint;
  return {
    impl: 'openmpi',
    handle: 'void *',
    handleBytes: 8,
    COMM_WORLD: sym('ompi_mpi_comm_world'),
    FLOAT: sym('ompi_mpi_float'),
    DOUBLE: sym('ompi_mpi_double'),
    INT: sym('ompi_mpi_int'),
    SUM: sym('ompi_mpi_op_sum'),
    ERRORS_RETURN: sym('ompi_mpi_errors_return'),
    INFO_NULL: sym('ompi_mpi_info_null'),
    COMM_TYPE_SHARED: 0,
    IN_PLACE: 1n,
    ANY_SOURCE: -1,
    STATUS_IGNORE: 0n,
    statusSource: 0,
  };
}

// values from MPICH's mpi.h (4.0), the same in Intel MPI and Cray MPICH
const MPICH_ABI: Abi = {
  impl: 'mpich',
  handle: 'int',
  handleBytes: 4,
  COMM_WORLD: 0x44000000,
  FLOAT: 0x4c00040a,
  DOUBLE: 0x4c00080b,
  INT: 0x4c000405,
  SUM: 0x58000003,
  ERRORS_RETURN: 0x54000001,
  INFO_NULL: 0x1c000000,
  COMM_TYPE_SHARED: 1,
  IN_PLACE: 0xffffffffffffffffn,
  ANY_SOURCE: -2,
  STATUS_IGNORE: 1n,
  statusSource: 8,
};

type Ptr = bigint | Buffer | Int32Array | Float32Array | Float64Array | null;

/** The functions qtune calls; each is the C function of the same name without `MPI_`. */
export interface MpiApi {
  Get_library_version(version: Buffer, len: Int32Array): number;
  Init_thread(argc: null, argv: null, required: number, provided: Int32Array): number;
  Initialized(flag: Int32Array): number;
  Finalized(flag: Int32Array): number;
  Finalize(): number;
  Abort(comm: Handle, code: number): number;
  Comm_rank(comm: Handle, rank: Int32Array): number;
  Comm_size(comm: Handle, size: Int32Array): number;
  Comm_set_errhandler(comm: Handle, errhandler: Handle): number;
  Comm_split_type(comm: Handle, type: number, key: number, info: Handle, out: Buffer): number;
  Comm_free(comm: Buffer): number;
  Error_string(code: number, text: Buffer, len: Int32Array): number;
  Iallreduce(
    send: Ptr,
    recv: Ptr,
    count: number,
    type: Handle,
    op: Handle,
    comm: Handle,
    request: Buffer,
  ): number;
  Ibcast(buf: Ptr, count: number, type: Handle, root: number, comm: Handle, request: Buffer): number;
  Ibarrier(comm: Handle, request: Buffer): number;
  Test(request: Buffer, flag: Int32Array, status: Ptr): number;
  Isend(
    buf: Ptr,
    count: number,
    type: Handle,
    dest: number,
    tag: number,
    comm: Handle,
    request: Buffer,
  ): number;
  Iprobe(source: number, tag: number, comm: Handle, flag: Int32Array, status: Ptr): number;
  Recv(buf: Ptr, count: number, type: Handle, source: number, tag: number, comm: Handle, status: Ptr): number;
  Request_free(request: Buffer): number;
}

// H: the ABI's handle type. Buffers are `void *`: koffi passes a typed array as a pointer to its
// bytes (no copy) and a BigInt as an address (MPI_IN_PLACE, MPI_STATUS_IGNORE).
const DECLS: Record<keyof MpiApi, string> = {
  Get_library_version: 'int MPI_Get_library_version(void *version, void *len)',
  Init_thread: 'int MPI_Init_thread(void *argc, void *argv, int required, void *provided)',
  Initialized: 'int MPI_Initialized(void *flag)',
  Finalized: 'int MPI_Finalized(void *flag)',
  Finalize: 'int MPI_Finalize()',
  Abort: 'int MPI_Abort(H comm, int code)',
  Comm_rank: 'int MPI_Comm_rank(H comm, void *rank)',
  Comm_size: 'int MPI_Comm_size(H comm, void *size)',
  Comm_set_errhandler: 'int MPI_Comm_set_errhandler(H comm, H errhandler)',
  Comm_split_type: 'int MPI_Comm_split_type(H comm, int type, int key, H info, void *newcomm)',
  Comm_free: 'int MPI_Comm_free(void *comm)',
  Error_string: 'int MPI_Error_string(int code, void *text, void *len)',
  Iallreduce: 'int MPI_Iallreduce(void *send, void *recv, int count, H type, H op, H comm, void *request)',
  Ibcast: 'int MPI_Ibcast(void *buf, int count, H type, int root, H comm, void *request)',
  Ibarrier: 'int MPI_Ibarrier(H comm, void *request)',
  Test: 'int MPI_Test(void *request, void *flag, void *status)',
  Isend: 'int MPI_Isend(void *buf, int count, H type, int dest, int tag, H comm, void *request)',
  Iprobe: 'int MPI_Iprobe(int source, int tag, H comm, void *flag, void *status)',
  Recv: 'int MPI_Recv(void *buf, int count, H type, int source, int tag, H comm, void *status)',
  Request_free: 'int MPI_Request_free(void *request)',
};

/** Shared-library names to try, most likely first for the launcher that started this process. */
export function libraryCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  const explicit = env['MPI_LIB'];
  if (explicit !== undefined && explicit !== '') return [explicit];
  const mac = process.platform === 'darwin';
  const ompi = mac ? ['libmpi.40.dylib'] : ['libmpi.so.40'];
  const mpich = mac ? ['libmpich.12.dylib', 'libmpi.12.dylib'] : ['libmpich.so.12', 'libmpi.so.12'];
  const order =
    env['PMI_SIZE'] !== undefined && env['OMPI_COMM_WORLD_SIZE'] === undefined
      ? [...mpich, ...ompi]
      : [...ompi, ...mpich];
  // the unversioned name exists only with the -dev packages
  return [...order, mac ? 'libmpi.dylib' : 'libmpi.so'];
}

/** A loaded MPI library: which one, its constants, and its functions. */
export class MpiLibrary {
  private constructor(
    /** The file or soname that loaded. */
    readonly file: string,
    /** MPI_Get_library_version's text, first line. */
    readonly version: string,
    readonly abi: Abi,
    readonly api: MpiApi,
  ) {}

  get impl(): MpiImpl {
    return this.abi.impl;
  }

  /**
   * Loads libmpi (MPI_LIB, else by soname through the loader's cache) and binds it. Throws
   * {@link MpiUnavailableError} naming the package to install when no library loads.
   */
  static load(env: NodeJS.ProcessEnv = process.env): MpiLibrary {
    // UCX (MPICH's ch4:ucx, Open MPI's pml ucx) installs SIGSEGV handlers when it loads, which turns
    // V8's WebAssembly bounds traps into crashes; an empty UCX_ERROR_SIGNALS keeps V8's handler
    if (process.env['UCX_ERROR_SIGNALS'] === undefined) process.env['UCX_ERROR_SIGNALS'] = '';
    const tried: string[] = [];
    let lib: LibraryHandle | null = null;
    let file = '';
    for (const name of libraryCandidates(env)) {
      try {
        // RTLD_GLOBAL, as mpi4py: Open MPI's plugins may expect libmpi's symbols to be global
        lib = koffi.load(name, { global: true });
        file = name;
        break;
      } catch (e) {
        tried.push(`${name} (${(e instanceof Error ? e.message : String(e)).split('\n')[0]!})`);
      }
    }
    if (lib === null) {
      const explicit = env['MPI_LIB'];
      throw new MpiUnavailableError(
        explicit !== undefined && explicit !== ''
          ? `MPI_LIB=${explicit} cannot be loaded: ${tried[0] ?? ''}`
          : `no MPI library found (tried ${tried.map((t) => t.split(' ')[0]).join(', ')})`,
        { hint: `${INSTALL_HINT}, or set MPI_LIB to the libmpi file`, details: { tried } },
      );
    }
    let getVersion: MpiApi['Get_library_version'];
    try {
      getVersion = lib.func(DECLS.Get_library_version) as MpiApi['Get_library_version'];
    } catch {
      throw new MpiUnavailableError(`${file} is not an MPI library (no MPI_Get_library_version)`, {
        hint: INSTALL_HINT,
      });
    }
    const buf = Buffer.alloc(8192); // MPI_MAX_LIBRARY_VERSION_STRING: 256 in Open MPI, 8192 in MPICH
    const len = new Int32Array(1);
    getVersion(buf, len);
    const version = buf
      .subarray(0, Math.max(0, Math.min(len[0]!, buf.length)))
      .toString('latin1')
      .replace(/\0[^]*$/, '')
      .trim()
      .split('\n')[0]!
      .trim();
    let abi: Abi;
    if (/Open MPI/i.test(version)) abi = openMpiAbi(lib);
    else if (/MPICH|Intel\(R\) MPI|MVAPICH/i.test(version)) abi = MPICH_ABI;
    else
      throw new MpiUnavailableError(`${file} is an MPI library qtune does not know: "${version}"`, {
        hint: 'use Open MPI or MPICH (or a derivative: Intel MPI, Cray MPICH, MVAPICH)',
      });
    const api: Record<string, unknown> = {};
    for (const [key, decl] of Object.entries(DECLS)) api[key] = lib.func(decl.replace(/\bH\b/g, abi.handle));
    return new MpiLibrary(file, version, abi, api as unknown as MpiApi);
  }

  /** The text of an MPI error code. */
  errorString(code: number): string {
    const buf = Buffer.alloc(1024); // MPI_MAX_ERROR_STRING: 256 in Open MPI, 512 in MPICH
    const len = new Int32Array(1);
    if (this.api.Error_string(code, buf, len) !== 0) return `MPI error ${code}`;
    return buf.subarray(0, len[0]).toString('latin1');
  }

  /** Throws an {@link MpiError} when an MPI call returned an error code. */
  check(fn: string, rc: number): void {
    if (rc !== 0)
      throw new MpiError(`MPI_${fn} failed: ${this.errorString(rc)} (code ${rc})`, {
        details: { function: fn, code: rc },
      });
  }

  /** A variable for an MPI_Request or MPI_Comm output. */
  handleBuffer(): Buffer {
    return Buffer.alloc(this.abi.handleBytes);
  }

  /** Reads a handle variable as the value to pass by value. */
  readHandle(b: Buffer): Handle {
    return this.abi.handleBytes === 8 ? b.readBigUInt64LE(0) : b.readInt32LE(0);
  }
}
