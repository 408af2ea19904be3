#!/usr/bin/env node
// The qtune command. The TypeScript sources are compiled to dist/ by `npm run build` (run on install).
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
