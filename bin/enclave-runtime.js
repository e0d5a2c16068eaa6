#!/usr/bin/env node
// The package bin: runs the compiled CLI (`npm run build` writes dist/).
import { main } from '../dist/src/cli.js';

process.exitCode = await main(process.argv.slice(2));
