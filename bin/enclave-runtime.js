#!/usr/bin/env -S node --initial-old-space-size=64
// The package bin: runs the compiled CLI (`npm run build` writes dist/). The V8 flag on the first
// line spares the relay's read buffers dozens of full GCs per GiB (`npm run bench`); Node refuses
// it in NODE_OPTIONS, so `npm start` passes it too.
import { main } from '../dist/src/cli.js';

// A command resolves once its work is done and its services are stopped. A library timer left
// behind (acme-client's retry back-off, say) must not hold the exit for another minute, so exit
// now. stdout and stderr are synchronous for files and pipes on Linux, so nothing is lost.
process.exit(await main(process.argv.slice(2)));
