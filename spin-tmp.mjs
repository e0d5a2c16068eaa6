import http from 'node:http';
import { once } from 'node:events';
import { ProxyAgent, request } from 'undici';
let n = 0;
const proxy = http.createServer((q, r) => { console.log('plain', q.method, q.url); r.end('x'); });
proxy.on('connect', (q, s) => { n++; if (n < 3) console.log('CONNECT', q.url); s.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n'); });
proxy.listen(0, '127.0.0.1'); await once(proxy, 'listening');
const d = new ProxyAgent({ uri: `http://127.0.0.1:${proxy.address().port}` });
setTimeout(() => { console.log('connects so far', n); process.exit(3); }, 3000);
try { await request('http://127.0.0.1:1/', { method: 'POST', body: 'x', dispatcher: d, signal: AbortSignal.timeout(1000) }); } catch (e) { console.log('err', e.name, e.code, e.message); }
console.log('done', n);
await d.close(); proxy.close();
