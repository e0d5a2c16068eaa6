#!/usr/bin/env node
// The package bin: runs the compiled CLI (`npm run build` writes dist/).
import { main } from '../dist/src/cli.js';

// A command resolves once its work is done and its services are stopped. A library timer left
// behind (acme-client's retry back-off, say) must not hold the exit for another minute, so exit
// now. stdout and stderr are synchronous for files and pipes on Linux, so nothing is lost.
process.exit(await main(process.argv.slice(2)));
