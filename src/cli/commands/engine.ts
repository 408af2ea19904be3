/** `qtune engine info|build`: which ggml is loaded, and the opt-in native build. */
import { getEngine } from '../../engine/library.js';
import { clearBuildFailure } from '../../engine/auto-build.js';
import { buildNativeEngine, cleanNativeEngines, readNativeBuildMeta } from '../../engine/native-build.js';
import { nativeEngineDir } from '../../engine/paths.js';
import { helpText, intFlag, parse, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'engine',
  summary: 'Show the ggml engine qtune loads, or compile a native one for this CPU (and CUDA GPUs).',
  usage:
    'qtune engine info [--json] | qtune engine build [--cuda [--cuda-arch LIST]] [--source DIR] [--jobs N] [--force] | qtune engine build --clean',
  flags: {
    cuda: {
      type: 'boolean',
      default: false,
      help: "also compile ggml's CUDA backend (needs the CUDA toolkit's nvcc)",
    },
    'cuda-arch': {
      type: 'string',
      help: 'CUDA architectures to compile for, e.g. 90 or "86;89" (default: native, the GPUs present)',
    },
    source: {
      type: 'string',
      help: `llama.cpp source folder to build from instead of node-llama-cpp's bundle (default: QTUNE_LLAMA_CPP_SOURCE)`,
    },
    json: { type: 'boolean', default: false, help: 'print engine info as JSON' },
    jobs: { type: 'string', help: 'parallel compile jobs for build (default: all CPUs)' },
    force: { type: 'boolean', default: false, help: 'rebuild even if a native build for this CPU exists' },
    clean: { type: 'boolean', default: false, help: 'delete every native build instead of building' },
  },
};

export function run(argv: string[], out: (s: string) => void): number {
  const { values, positionals } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const sub = positionals[0] ?? 'info';
  if (sub === 'info') {
    const { info } = getEngine();
    if (values['json'] === true) {
      out(JSON.stringify(info, null, 2));
      return 0;
    }
    out(
      `engine:      ${info.kind} (ggml ${info.ggmlVersion}, commit ${info.ggmlCommit}, llama.cpp ${info.llamaCppTag})`,
    );
    out(`release:     ${info.release}`);
    out(`path:        ${info.path}`);
    out(`cpu:         ${info.cpuModel}`);
    out(`cpu backend: ${info.cpuVariant} (${info.cpuVariantPath})`);
    out(`cpu features: ${Object.keys(info.cpuFeatures).join(' ') || 'none reported'}`);
    out(`threads:     ${info.threads}`);
    for (const g of info.gpuBackends) {
      out(
        `gpu backend: ${g.kind} ${g.loaded ? 'loaded' : 'not loaded'} from ${g.package}${g.note ? ` — ${g.note}` : ''}`,
      );
    }
    const cuda = info.kind === 'native' ? readNativeBuildMeta(info.path)?.cuda : undefined;
    if (cuda !== undefined)
      out(`cuda build:  architectures ${cuda.arch}, nvcc ${cuda.nvccVersion} (${cuda.nvcc})`);
    if (info.kind === 'prebuilt')
      out(`native build: none for this CPU (\`qtune engine build\` writes ${nativeEngineDir()})`);
    return 0;
  }
  if (sub === 'build') {
    if (values['clean'] === true) {
      const removed = cleanNativeEngines();
      clearBuildFailure();
      out(removed.length === 0 ? 'no native builds to remove' : `removed ${removed.join(', ')}`);
      return 0;
    }
    const jobs = intFlag('jobs', values['jobs']);
    const cudaArch = values['cuda-arch'];
    const source = values['source'];
    const result = buildNativeEngine({
      force: values['force'] === true,
      cuda: values['cuda'] === true,
      log: (s) => out(`engine build: ${s}`),
      ...(jobs === undefined ? {} : { jobs }),
      ...(typeof cudaArch === 'string' ? { cudaArch } : {}),
      ...(typeof source === 'string' ? { source } : {}),
    });
    clearBuildFailure(); // an automatic build that failed before no longer holds the prebuilt engine
    const what = result.cudaArch === null ? 'native engine' : `native engine with CUDA (${result.cudaArch})`;
    out(
      result.reused
        ? `a ${what.replace('native engine', 'native build')} for this CPU already exists at ${result.dir} (use --force to rebuild)`
        : `built the ${what} in ${result.seconds.toFixed(0)} s at ${result.dir}; qtune uses it from now on (QTUNE_ENGINE=prebuilt to opt out)`,
    );
    return 0;
  }
  throw new UsageError(
    `engine: unknown subcommand "${sub}"`,
    'use `qtune engine info` or `qtune engine build`',
  );
}
