// The demo app `npm start` puts on the app port: an ordinary HTTP server that knows nothing of
// enclaves, plus one route showing how app code fetches its own attestation document.
import http from 'node:http';

const port = Number(process.env.PORT ?? 8008);
const attestationApi = process.env.ATTESTATION_API ?? 'http://127.0.0.1:9999';

const server = http.createServer(async (request, response) => {
  if (request.url === '/attestation') {
    try {
      const answer = await fetch(`${attestationApi}/attestation-doc?nonce=00ff`, {
        headers: { accept: 'application/json' },
      });
      response.writeHead(answer.status, { 'content-type': 'application/json' });
      response.end(await answer.text());
    } catch (error) {
      response.writeHead(502, { 'content-type': 'text/plain' });
      response.end(`attestation API unreachable: ${error.message}\n`);
    }
    return;
  }
  response.writeHead(200, { 'content-type': 'text/plain' });
  response.end(`hello from the demo app inside the enclave (${request.method} ${request.url})\n`);
});

// A connection is busy from a request's start to its response's end; otherwise it is idle
// (kept alive, or opened with no request yet), and nobody is waiting for it.
const busy = new Map();
server.on('connection', (socket) => {
  busy.set(socket, 0);
  socket.once('close', () => busy.delete(socket));
});
server.on('request', (request, response) => {
  const { socket } = request;
  busy.set(socket, (busy.get(socket) ?? 0) + 1);
  response.once('close', () => {
    busy.set(socket, busy.get(socket) - 1);
    if (stopping && busy.get(socket) === 0) socket.destroy();
  });
});

let stopping = false;
server.listen(port, '127.0.0.1', () => console.log(`demo app listening on 127.0.0.1:${port}`));
// On SIGTERM (what the runtime sends on stop) or Ctrl-C: stop accepting, close idle connections at
// once, let requests in progress finish, then exit 0.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    server.close(() => process.exit(0));
    for (const [socket, requests] of busy) if (requests === 0) socket.destroy();
  });
}
