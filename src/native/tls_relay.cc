// The native TLS ingress engine (`ingress.tls_engine = "native"`): accepts on the listening fd,
// runs the TLS handshake with OpenSSL (Node's own, linked from the node binary), connects the app
// and relays both ways on uv_poll, with no JS per connection or per chunk. JS is asked only for a
// nonce certificate (`<nonce>.attest.<host>`); counters go straight into the worker's shared
// stats buffer, which the main thread reads for /metrics and health.
//
// Why it exists: Node's TLSSocket costs a JS stream, a TLSWrap, a libuv stream and their buffers
// per connection, and a JS call per chunk in each direction. That was the gap to nginx (issue 17).
#include <arpa/inet.h>
#include <napi.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "addon_data.h"
#include "errno_value.h"
#include "exports.h"

namespace enclave {
namespace {

// Plaintext bytes taken per read: a TLS record carries at most 16 KiB, and an app read of 64 KiB
// becomes four full records. One buffer per engine, not per connection: an idle connection holds
// no buffer at all, and a partial write keeps only what the peer has not taken yet.
constexpr size_t kScratchBytes = 64 * 1024;
// Per readiness callback, so one busy connection cannot starve the others (level-triggered
// polling brings us back for the rest).
constexpr int kMaxReadsPerRun = 16;
constexpr int kMaxAcceptsPerPoll = 64;
// Accept balance between the workers sharing one listener: a worker holding more than this many
// connections above the least loaded accepting worker leaves the next ones to it. On two busy
// cores the worker already running drains a burst from the backlog before its sibling is
// scheduled (64 connections opened at once split 0/64 half the time); this keeps the split
// within a few connections.
constexpr int32_t kAcceptSlack = 2;
// How often a yielding worker looks again, and how long at most it leaves waiting connections to
// a sibling: one that has not taken them by then (busy with heavier connections, or stuck in a
// long callback) does not hold them back. This worker then takes up to kAcceptGrant of what is
// waiting before it yields again: 16 per 20 ms is 800 handshakes/s, about what one worker completes.
constexpr uint64_t kYieldRecheckMs = 1;
constexpr double kYieldMaxMs = 20;
constexpr int kAcceptGrant = 16;
// SNI is at most 255 bytes on the wire (RFC 6066 host_name in practice; RFC 1035 names).
constexpr size_t kMaxServerName = 255;
constexpr int kMaxHistogramBuckets = 32;

// Events passed to the JS callback as (type, a, b); mirrored by TlsRelayEvent in native-binding.ts.
enum RelayEvent : int {
  kEventCertificate = 1,     // a: connection id, b: server name; answer with provide(id, credentials | null)
  kEventAppUnreachable = 2,  // a: errno of the failed connect (ETIMEDOUT for connect_timeout_ms)
  kEventAcceptPaused = 3,    // a: errno (EMFILE, ENFILE, ...); accepting resumes at the next sweep
  kEventClosed = 4,          // every fd and handle is closed; no further events
};

// Where each counter sits in the shared Float64Array (given by JS, from STAT_SLOTS).
struct StatSlots {
  uint32_t accepted, active, refusedOverCap, appUnreachable;
  uint32_t handshakesOk, handshakesFailed, handshakeSum, handshakeCount, handshakeBuckets;
};

double NowMs(uv_loop_t* loop) {
  uv_update_time(loop);
  return static_cast<double>(uv_now(loop));
}

// A certificate, its chain and its key, parsed once and shared (by reference count) with every
// connection it is served on.
class Credentials : public Napi::ObjectWrap<Credentials> {
 public:
  static Napi::Function Define(Napi::Env env, AddonData* addon) {
    Napi::Function constructor = DefineClass(env, "TlsCredentials", {});
    addon->tlsCredentials = Napi::Persistent(constructor);
    return constructor;
  }

  // The credentials `value` wraps, or null: checked against this thread's constructor first, as
  // unwrapping an object of another class would read it as the wrong type.
  static Credentials* From(Napi::Env env, const Napi::Value& value) {
    AddonData* addon = env.GetInstanceData<AddonData>();
    if (!value.IsObject() || addon == nullptr || addon->tlsCredentials.IsEmpty()) return nullptr;
    bool is = false;
    if (napi_instanceof(env, value, addon->tlsCredentials.Value(), &is) != napi_ok || !is) return nullptr;
    Credentials* credentials = nullptr;
    if (napi_unwrap(env, value, reinterpret_cast<void**>(&credentials)) != napi_ok) return nullptr;
    return credentials != nullptr && credentials->Usable() ? credentials : nullptr;
  }

  // new TlsCredentials(certPem, chainPem, keyPem | TlsCredentials): a nonce leaf reuses the key of
  // the credentials it is given instead of decoding the same PEM again.
  explicit Credentials(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Credentials>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString()) {
      Napi::TypeError::New(env, "TlsCredentials(certPem, chainPem, keyPem | TlsCredentials)")
          .ThrowAsJavaScriptException();
      return;
    }
    ERR_clear_error();
    bool keyReused = false;
    std::string certPem = info[0].As<Napi::String>().Utf8Value();
    std::string chainPem = info[1].As<Napi::String>().Utf8Value();
    if (info[2].IsString()) {
      std::string keyPem = info[2].As<Napi::String>().Utf8Value();
      BIO* bio = BIO_new_mem_buf(keyPem.data(), static_cast<int>(keyPem.size()));
      key_ = bio ? PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr) : nullptr;
      BIO_free(bio);
    } else {
      Credentials* other = From(env, info[2]);
      if (other != nullptr && other->key_ != nullptr && EVP_PKEY_up_ref(other->key_) == 1) {
        key_ = other->key_;
        keyReused = true;
      }
      // A nonce leaf's chain is the base's: parsing it again costs as much as the leaf (OpenSSL 3.0
      // decodes every certificate's public key through its slow decoder setup).
      if (other != nullptr && other->chainPem_ == chainPem) chain_ = X509_chain_up_ref(other->chain_);
    }
    BIO* bio = BIO_new_mem_buf(certPem.data(), static_cast<int>(certPem.size()));
    cert_ = bio ? PEM_read_bio_X509(bio, nullptr, nullptr, nullptr) : nullptr;
    BIO_free(bio);
    if (chain_ == nullptr) {
      chain_ = sk_X509_new_null();
      bio = BIO_new_mem_buf(chainPem.data(), static_cast<int>(chainPem.size()));
      while (bio != nullptr && chain_ != nullptr) {
        X509* link = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
        if (link == nullptr) break;
        if (sk_X509_push(chain_, link) == 0) X509_free(link);
      }
      BIO_free(bio);
    }
    chainPem_ = std::move(chainPem);
    // A leaf given the base's key is checked against it when served (SSL_use_cert_and_key compares the
    // keys); checking here as well cost a nonce handshake a tenth of its wait for the certificate.
    bool ok = key_ != nullptr && cert_ != nullptr && chain_ != nullptr &&
              (keyReused || X509_check_private_key(cert_, key_) == 1);
    ERR_clear_error();
    if (!ok) {
      Napi::Error error =
          Napi::Error::New(env, "the certificate, chain or key does not parse, or the key is not the certificate's");
      error.Set("code", Napi::String::New(env, "ERR_TLS_CREDENTIALS"));
      error.ThrowAsJavaScriptException();
    }
  }

  ~Credentials() override {
    X509_free(cert_);
    EVP_PKEY_free(key_);
    if (chain_ != nullptr) sk_X509_pop_free(chain_, X509_free);
  }

  bool Usable() const { return cert_ != nullptr && key_ != nullptr && chain_ != nullptr; }
  // Both copy what they keep (reference counts), so these credentials may be collected afterwards.
  bool ServeOn(SSL* ssl) const { return SSL_use_cert_and_key(ssl, cert_, key_, chain_, 1) == 1; }
  bool ServeOn(SSL_CTX* ctx) const { return SSL_CTX_use_cert_and_key(ctx, cert_, key_, chain_, 1) == 1; }

 private:
  X509* cert_ = nullptr;
  EVP_PKEY* key_ = nullptr;
  STACK_OF(X509) * chain_ = nullptr;
  std::string chainPem_;  // to know a chain already parsed
};

struct Engine;

enum class State { kHandshake, kWaitCertificate, kWaitFirstByte, kConnecting, kRelay };

struct Side {
  uv_poll_t poll;
  int fd = -1;
  int armed = 0;
  bool polled = false;  // uv_poll_init ran, so the handle must be closed
};

struct Connection {
  Engine* engine;
  Connection* prev = nullptr;
  Connection* next = nullptr;
  double id;
  Side client;
  Side app;
  SSL* ssl = nullptr;
  State state = State::kHandshake;
  // What the last SSL call on the client asked for: it decides the client's poll interest.
  bool sslWantsRead = true;
  bool sslWantsWrite = false;
  bool rerun = false;  // stopped at kMaxReadsPerRun with records read ahead
  bool certificateChosen = false;
  bool inHello = false;
  Credentials* chosen = nullptr;  // set by provide() while inside the ClientHello callback
  Napi::ObjectReference chosenRef;
  // Plaintext one peer has not taken yet; empty (no memory) while the relay keeps up.
  std::string toApp;
  size_t toAppOffset = 0;
  std::string toClient;
  size_t toClientOffset = 0;
  bool clientEof = false;   // the client sent close_notify or FIN
  bool appEof = false;      // the app sent FIN
  bool appShut = false;     // the app was told FIN
  bool clientShut = false;  // the client was told close_notify and FIN
  bool shutdownPending = false;
  int busy = 0;
  bool doomed = false;
  bool destroyed = false;
  int openHandles = 0;
  double startedAt;
  double connectSince;  // start of the connect to the app
  double quietSince;
  double moved = 0;
  double movedAtSweep = 0;
};

struct Engine {
  napi_env env = nullptr;
  uv_loop_t* loop = nullptr;
  class TlsRelay* owner = nullptr;
  SSL_CTX* ctx = nullptr;
  Side listener;
  bool accepting = false;
  bool acceptPaused = false;
  // The accept balance: every worker's open connections (-1: not accepting), shared by the workers.
  int32_t* loads = nullptr;
  uint32_t loadCount = 0, loadIndex = 0;
  bool yielding = false;
  double yieldingSince = -1;
  int granted = 0;  // accepts it may still try, of what waited kYieldMaxMs, without looking at the balance
  uv_timer_t yieldTimer;
  uv_timer_t sweep;
  bool sweepStarted = false;
  int openHandles = 0;
  bool closing = false;
  napi_async_cleanup_hook_handle cleanupHook = nullptr;
  Connection* head = nullptr;
  std::unordered_map<double, Connection*> waiting;  // connections waiting for a nonce certificate
  double nextId = 1;
  double active = 0;
  std::vector<char> scratch = std::vector<char>(kScratchBytes);
  std::vector<unsigned char> alpn;  // wire format: length-prefixed protocol names
  std::string nonceMarker;          // ".attest.": a server name without it never asks JS
  sockaddr_storage app;
  socklen_t appLength = 0;
  bool firstByte = false;
  double handshakeTimeoutMs = 10000, idleTimeoutMs = 300000, connectTimeoutMs = 5000;
  double maxConnections = 4096;
  double* stats = nullptr;
  StatSlots slots;
  std::vector<double> bucketBounds;
};

void Arm(Connection* c);
void Run(Connection* c);
void Destroy(Connection* c);

void Count(Engine* e, uint32_t slot, double by = 1) {
  if (e->stats != nullptr) e->stats[slot] += by;
}

// A worker that does not accept (stopped, closing, or paused out of fds) shows -1, so that its
// siblings do not leave connections to it.
void PublishLoad(Engine* e) {
  if (e->loads == nullptr) return;
  int32_t load = e->accepting && !e->closing && !e->acceptPaused ? static_cast<int32_t>(e->active) : -1;
  __atomic_store_n(&e->loads[e->loadIndex], load, __ATOMIC_RELAXED);
}

// The open-connection count lives in three places (the engine's own, the shared stats, the
// siblings' loads): each change goes to all three.
void ChangeActive(Engine* e, double by) {
  e->active += by;
  Count(e, e->slots.active, by);
  PublishLoad(e);
}

class TlsRelay : public Napi::ObjectWrap<TlsRelay> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TlsRelay",
                       {
                           InstanceMethod("setBase", &TlsRelay::SetBase),
                           InstanceMethod("start", &TlsRelay::Start),
                           InstanceMethod("provide", &TlsRelay::Provide),
                           InstanceMethod("stopAccepting", &TlsRelay::StopAccepting),
                           InstanceMethod("close", &TlsRelay::Close),
                       });
  }

  explicit TlsRelay(const Napi::CallbackInfo& info);
  ~TlsRelay() override {
    if (engine_ != nullptr) engine_->owner = nullptr;
  }

  void EmitEvent(int type, napi_value a, napi_value b);
  void Finished();
  Engine* engine_ = nullptr;

 private:
  Napi::Value SetBase(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Provide(const Napi::CallbackInfo& info);
  Napi::Value StopAccepting(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  Napi::FunctionReference callback_;
  Napi::ObjectReference statsRef_;
  Napi::ObjectReference loadsRef_;
  napi_async_context asyncContext_ = nullptr;
};

void TlsRelay::EmitEvent(int type, napi_value a, napi_value b) {
  napi_env env = Env();
  if (callback_.IsEmpty() || !CanCallIntoJs(env)) return;
  MakeEventCallback(env, static_cast<napi_ref>(*this), static_cast<napi_ref>(callback_), asyncContext_, type, a, b);
}

void Emit(Engine* e, int type, double a, const std::string* text = nullptr) {
  if (e->owner == nullptr) return;
  napi_handle_scope scope;
  if (napi_open_handle_scope(e->env, &scope) != napi_ok) return;
  napi_value first = nullptr, second = nullptr;
  napi_create_double(e->env, a, &first);
  if (text != nullptr) napi_create_string_utf8(e->env, text->data(), text->size(), &second);
  e->owner->EmitEvent(type, first, second);
  napi_close_handle_scope(e->env, scope);
}

// --- handles ---------------------------------------------------------------------------------

// One of the engine's handles (listener, timer or a whole connection) is gone; the last one frees
// the engine and tells JS, or a tearing-down environment, that nothing is left.
void HandleDone(Engine* e) {
  if (--e->openHandles > 0) return;
  if (e->ctx != nullptr) SSL_CTX_free(e->ctx);
  e->ctx = nullptr;
  if (e->cleanupHook != nullptr) napi_remove_async_cleanup_hook(e->cleanupHook);
  TlsRelay* owner = e->owner;
  delete e;
  if (owner != nullptr) owner->Finished();
}

void OnEngineHandleClosed(uv_handle_t* handle) {
  Engine* e = static_cast<Engine*>(handle->data);
  if (handle == reinterpret_cast<uv_handle_t*>(&e->listener.poll)) ::close(e->listener.fd);
  HandleDone(e);
}

void CloseEngineHandle(Engine* e, uv_handle_t* handle) {
  if (uv_is_closing(handle)) return;
  uv_close(handle, OnEngineHandleClosed);
}

void OnSideClosed(uv_handle_t* handle) {
  Connection* c = static_cast<Connection*>(handle->data);
  Side* side = reinterpret_cast<uv_poll_t*>(handle) == &c->client.poll ? &c->client : &c->app;
  ::close(side->fd);
  side->fd = -1;
  if (--c->openHandles > 0) return;
  Engine* e = c->engine;
  delete c;
  HandleDone(e);
}

void CloseSide(Side* side) {
  if (side->polled) {
    uv_close(reinterpret_cast<uv_handle_t*>(&side->poll), OnSideClosed);
  } else if (side->fd >= 0) {
    ::close(side->fd);
    side->fd = -1;
  }
}

// Connections count as engine handles too, so the engine (and the addon's code) outlives them.
void Destroy(Connection* c) {
  if (c->destroyed) return;
  if (c->busy > 0) {
    c->doomed = true;
    return;
  }
  c->destroyed = true;
  Engine* e = c->engine;
  if (c->state == State::kHandshake || c->state == State::kWaitCertificate) Count(e, e->slots.handshakesFailed);
  e->waiting.erase(c->id);
  if (c->prev != nullptr)
    c->prev->next = c->next;
  else
    e->head = c->next;
  if (c->next != nullptr) c->next->prev = c->prev;
  ChangeActive(e, -1);
  SSL_free(c->ssl);
  c->ssl = nullptr;
  c->chosenRef.Reset();
  c->openHandles = (c->client.polled ? 1 : 0) + (c->app.polled ? 1 : 0);
  bool anyHandle = c->openHandles > 0;
  CloseSide(&c->client);
  CloseSide(&c->app);
  if (!anyHandle) {
    delete c;
    HandleDone(e);
  }
}

bool Gone(const Connection* c) { return c->destroyed || c->doomed; }

// --- relay -----------------------------------------------------------------------------------

int SslError(Connection* c, int result) {
  int err = SSL_get_error(c->ssl, result);
  ERR_clear_error();
  return err;
}

void StartConnect(Connection* c) {
  Engine* e = c->engine;
  c->state = State::kConnecting;
  c->connectSince = NowMs(e->loop);
  int fd = ::socket(e->app.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int err = 0;
  if (fd < 0) {
    err = errno;
  } else {
    c->app.fd = fd;
    if (e->app.ss_family != AF_UNIX) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (::connect(fd, reinterpret_cast<sockaddr*>(&e->app), e->appLength) != 0 && errno != EINPROGRESS) err = errno;
  }
  if (err == 0 && uv_poll_init(e->loop, &c->app.poll, fd) == 0) {
    c->app.poll.data = c;
    c->app.polled = true;
    return;  // Arm() waits for writable: the connect's outcome
  }
  if (err == 0) err = EIO;
  Count(e, e->slots.appUnreachable);
  Destroy(c);
  Emit(e, kEventAppUnreachable, err);
}

// False when the connect failed (the connection is destroyed).
bool FinishConnect(Connection* c) {
  int err = 0;
  socklen_t length = sizeof(err);
  if (getsockopt(c->app.fd, SOL_SOCKET, SO_ERROR, &err, &length) != 0) err = errno;
  if (err == EINPROGRESS) return true;
  if (err != 0) {
    Engine* e = c->engine;
    Count(e, e->slots.appUnreachable);
    Destroy(c);
    Emit(e, kEventAppUnreachable, err);
    return false;
  }
  c->state = State::kRelay;
  c->quietSince = NowMs(c->engine->loop);
  return true;
}

void RecordHandshake(Connection* c) {
  Engine* e = c->engine;
  double seconds = (NowMs(e->loop) - c->startedAt) / 1000;
  Count(e, e->slots.handshakesOk);
  Count(e, e->slots.handshakeSum, seconds);
  Count(e, e->slots.handshakeCount);
  for (size_t i = 0; i < e->bucketBounds.size(); i++) {
    if (seconds <= e->bucketBounds[i]) Count(e, e->slots.handshakeBuckets + static_cast<uint32_t>(i));
  }
}

void Handshake(Connection* c) {
  ERR_clear_error();
  int result = SSL_do_handshake(c->ssl);
  if (result == 1) {
    RecordHandshake(c);
    c->sslWantsRead = c->sslWantsWrite = false;
    c->quietSince = NowMs(c->engine->loop);
    if (c->engine->firstByte) {
      c->state = State::kWaitFirstByte;
    } else {
      StartConnect(c);
    }
    return;
  }
  switch (SslError(c, result)) {
    case SSL_ERROR_WANT_READ:
      c->sslWantsRead = true;
      c->sslWantsWrite = false;
      return;
    case SSL_ERROR_WANT_WRITE:
      c->sslWantsRead = false;
      c->sslWantsWrite = true;
      return;
    case SSL_ERROR_WANT_CLIENT_HELLO_CB:
      c->state = State::kWaitCertificate;
      c->sslWantsRead = c->sslWantsWrite = false;
      return;
    default:
      Destroy(c);  // a failed handshake: bad bytes, no shared protocol or cipher, or a reset
  }
}

// Writes the pending app-bound bytes; false when the connection was destroyed.
bool FlushToApp(Connection* c) {
  while (c->toAppOffset < c->toApp.size()) {
    ssize_t n = ::send(c->app.fd, c->toApp.data() + c->toAppOffset, c->toApp.size() - c->toAppOffset, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      Destroy(c);
      return false;
    }
    c->toAppOffset += static_cast<size_t>(n);
  }
  std::string().swap(c->toApp);  // give the memory back: an idle connection holds none
  c->toAppOffset = 0;
  return true;
}

// SSL_write of the pending client-bound bytes; false when the connection was destroyed.
bool FlushToClient(Connection* c) {
  while (c->toClientOffset < c->toClient.size()) {
    ERR_clear_error();
    int n = SSL_write(c->ssl, c->toClient.data() + c->toClientOffset,
                      static_cast<int>(c->toClient.size() - c->toClientOffset));
    if (n > 0) {
      c->toClientOffset += static_cast<size_t>(n);
      continue;
    }
    int err = SslError(c, n);
    if (err == SSL_ERROR_WANT_WRITE) return true;
    if (err == SSL_ERROR_WANT_READ) return true;  // a key update in flight; the read side resumes it
    Destroy(c);
    return false;
  }
  std::string().swap(c->toClient);
  c->toClientOffset = 0;
  return true;
}

// Client -> app. Reads only while nothing waits for the app, so a slow app stops the client.
bool PumpFromClient(Connection* c) {
  Engine* e = c->engine;
  c->rerun = false;
  for (int i = 0; !c->clientEof && c->toApp.empty(); i++) {
    if (c->state != State::kRelay && c->state != State::kWaitFirstByte) return true;
    if (i == kMaxReadsPerRun) {
      // Fair to the other connections: stop here. Records OpenSSL already read ahead would get no
      // readable event from the socket, so wait for writable instead, which comes at once.
      c->rerun = SSL_has_pending(c->ssl) == 1;
      break;
    }
    ERR_clear_error();
    int n = SSL_read(c->ssl, e->scratch.data(), static_cast<int>(e->scratch.size()));
    if (n > 0) {
      c->moved += n;
      c->sslWantsRead = c->sslWantsWrite = false;
      if (c->state == State::kWaitFirstByte) {
        c->toApp.assign(e->scratch.data(), static_cast<size_t>(n));
        StartConnect(c);
        return !Gone(c);
      }
      ssize_t w;
      do w = ::send(c->app.fd, e->scratch.data(), static_cast<size_t>(n), MSG_NOSIGNAL);
      while (w < 0 && errno == EINTR);
      if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        Destroy(c);
        return false;
      }
      if (w < n) c->toApp.assign(e->scratch.data() + (w < 0 ? 0 : w), static_cast<size_t>(n - (w < 0 ? 0 : w)));
      // A request-sized read with nothing left in OpenSSL: the socket is most likely drained, and
      // level-triggered polling calls again if not. Saves the read(2) that would say EAGAIN.
      if (!SSL_has_pending(c->ssl)) break;
      continue;
    }
    int err = SslError(c, n);
    // Both flags from every outcome: a stale "wants write" would keep a writable socket polled
    // and spin the loop (a client can make SSL_read write, with a KeyUpdate).
    if (err == SSL_ERROR_WANT_READ) {
      c->sslWantsRead = true;
      c->sslWantsWrite = false;
      return true;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
      c->sslWantsRead = false;
      c->sslWantsWrite = true;
      return true;
    }
    // close_notify, or a FIN without one (SSL_OP_IGNORE_UNEXPECTED_EOF): the end of the stream.
    if (err == SSL_ERROR_ZERO_RETURN) {
      c->clientEof = true;
      if (c->state == State::kWaitFirstByte) {
        Destroy(c);  // closed before a byte: it never reaches the app
        return false;
      }
      break;
    }
    Destroy(c);
    return false;
  }
  if (c->clientEof && c->toApp.empty() && !c->appShut && c->state == State::kRelay) {
    ::shutdown(c->app.fd, SHUT_WR);
    c->appShut = true;
  }
  return true;
}

// App -> client, in TLS records.
bool PumpFromApp(Connection* c) {
  Engine* e = c->engine;
  if (c->state != State::kRelay) return true;
  if (!FlushToClient(c)) return false;
  for (int i = 0; i < kMaxReadsPerRun && !c->appEof && c->toClient.empty(); i++) {
    ssize_t n = ::read(c->app.fd, e->scratch.data(), e->scratch.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      Destroy(c);
      return false;
    }
    if (n == 0) {
      c->appEof = true;
      break;
    }
    c->moved += static_cast<double>(n);
    // Written from the scratch buffer; only what the client's socket does not take now is copied.
    for (ssize_t off = 0; off < n;) {
      ERR_clear_error();
      int w = SSL_write(c->ssl, e->scratch.data() + off, static_cast<int>(n - off));
      if (w > 0) {
        off += w;
        continue;
      }
      int err = SslError(c, w);
      if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ) {
        Destroy(c);
        return false;
      }
      c->toClient.assign(e->scratch.data() + off, static_cast<size_t>(n - off));
      c->toClientOffset = 0;
      break;
    }
    // Less than asked for: the socket is drained (or nearly; the poll calls again).
    if (static_cast<size_t>(n) < e->scratch.size()) break;
  }
  if (c->appEof && c->toClient.empty() && !c->clientShut) {
    ERR_clear_error();
    int result = SSL_shutdown(c->ssl);
    if (result < 0 && SslError(c, result) == SSL_ERROR_WANT_WRITE) {
      c->shutdownPending = true;
      return true;
    }
    ERR_clear_error();
    c->shutdownPending = false;
    ::shutdown(c->client.fd, SHUT_WR);
    c->clientShut = true;
  }
  return true;
}

void Run(Connection* c) {
  c->busy++;
  if (c->state == State::kHandshake) Handshake(c);
  if (!Gone(c) && (c->state == State::kRelay || c->state == State::kWaitFirstByte)) {
    if (FlushToApp(c) && PumpFromClient(c)) PumpFromApp(c);
  }
  c->busy--;
  if (c->doomed) {
    if (c->busy == 0) Destroy(c);
    return;
  }
  if (c->clientEof && c->appEof && c->clientShut && c->appShut && c->toApp.empty() && c->toClient.empty()) {
    Destroy(c);  // both directions finished cleanly
    return;
  }
  Arm(c);
}

void OnClientPoll(uv_poll_t* poll, int status, int events) {
  Connection* c = static_cast<Connection*>(poll->data);
  if (status < 0) return Destroy(c);
  Run(c);
}

void OnAppPoll(uv_poll_t* poll, int status, int events) {
  Connection* c = static_cast<Connection*>(poll->data);
  // A refused connect comes as POLLERR, which libuv reports as a bad status: SO_ERROR says why.
  if (c->state == State::kConnecting) {
    if (!FinishConnect(c)) return;
    if (c->state == State::kConnecting) {
      if (status < 0) Destroy(c);  // an error status with no socket error
      return;
    }
  } else if (status < 0) {
    return Destroy(c);
  }
  Run(c);
}

void SetInterest(Side* side, int events, uv_poll_cb callback) {
  if (!side->polled || side->armed == events) return;
  side->armed = events;
  if (events == 0)
    uv_poll_stop(&side->poll);
  else
    uv_poll_start(&side->poll, events, callback);
}

void OnListenerPoll(uv_poll_t* poll, int status, int events);

// Recomputes what each fd waits for from the connection's state.
void Arm(Connection* c) {
  int client = 0;
  int app = 0;
  switch (c->state) {
    case State::kHandshake:
      client = (c->sslWantsRead ? UV_READABLE : 0) | (c->sslWantsWrite ? UV_WRITABLE : 0);
      break;
    case State::kWaitCertificate:
      break;
    case State::kWaitFirstByte:
      client = c->sslWantsWrite || c->rerun ? UV_WRITABLE : UV_READABLE;
      break;
    case State::kConnecting:
      app = UV_WRITABLE;
      break;
    case State::kRelay:
      if (!c->clientEof && c->toApp.empty()) {
        // SSL_read is called again only here: its wishes count only here.
        client |= c->sslWantsWrite || c->rerun ? UV_WRITABLE : UV_READABLE;
      }
      if (!c->toClient.empty() || c->shutdownPending) client |= UV_WRITABLE;
      if (!c->appEof && c->toClient.empty()) app |= UV_READABLE;
      if (!c->toApp.empty()) app |= UV_WRITABLE;
      break;
  }
  SetInterest(&c->client, client, OnClientPoll);
  SetInterest(&c->app, app, OnAppPoll);
}

void ArmListener(Engine* e) {
  SetInterest(&e->listener, e->accepting && !e->acceptPaused && !e->yielding ? UV_READABLE : 0, OnListenerPoll);
}

// --- ClientHello: the certificate for this server name ------------------------------------------

bool ServerNameOf(SSL* ssl, std::string* name) {
  const unsigned char* p = nullptr;
  size_t length = 0;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &length) != 1) return false;
  // ServerNameList: u16 length, then entries of u8 type, u16 length, name.
  if (length < 5) return false;
  size_t listLength = (static_cast<size_t>(p[0]) << 8) | p[1];
  if (listLength + 2 != length || p[2] != TLSEXT_NAMETYPE_host_name) return false;
  size_t nameLength = (static_cast<size_t>(p[3]) << 8) | p[4];
  if (nameLength == 0 || nameLength > kMaxServerName || nameLength + 5 > length) return false;
  name->assign(reinterpret_cast<const char*>(p + 5), nameLength);
  return name->find('\0') == std::string::npos;
}

// The marker is "attest" as a label, which DNS matches case-insensitively, as parseNonceServerName does.
bool HasMarker(const std::string& name, const std::string& marker) {
  return std::search(name.begin(), name.end(), marker.begin(), marker.end(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
         }) != name.end();
}

bool Apply(Connection* c) {
  if (c->chosen == nullptr) return true;  // the base certificate, already on the connection
  bool ok = c->chosen->ServeOn(c->ssl);
  ERR_clear_error();
  c->chosen = nullptr;
  c->chosenRef.Reset();
  return ok;
}

int OnClientHello(SSL* ssl, int* alert, void* arg) {
  Connection* c = static_cast<Connection*>(SSL_get_app_data(ssl));
  if (c == nullptr) return 1;
  if (!c->certificateChosen) {
    std::string name;
    Engine* e = c->engine;
    if (ServerNameOf(ssl, &name) && HasMarker(name, e->nonceMarker)) {
      e->waiting[c->id] = c;
      c->inHello = true;
      Emit(e, kEventCertificate, c->id, &name);
      c->inHello = false;
      if (!c->certificateChosen) return SSL_CLIENT_HELLO_RETRY;
    } else {
      c->certificateChosen = true;
    }
  }
  if (!Apply(c)) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

int OnAlpn(SSL* ssl, const unsigned char** out, unsigned char* outLength, const unsigned char* in,
           unsigned int inLength, void* arg) {
  Engine* e = static_cast<Engine*>(arg);
  unsigned char* selected = nullptr;
  // Server preference order, as Node's ALPNProtocols; no protocol in common is refused.
  if (SSL_select_next_proto(&selected, outLength, e->alpn.data(), static_cast<unsigned int>(e->alpn.size()), in,
                            inLength) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

// --- accepting and sweeping ----------------------------------------------------------------------

void Accept(Engine* e, int fd) {
  if (e->active >= e->maxConnections) {
    Count(e, e->slots.refusedOverCap);
    ::close(fd);
    return;
  }
  auto* c = new Connection();
  c->engine = e;
  c->id = e->nextId++;
  c->client.fd = fd;
  c->startedAt = c->quietSince = c->connectSince = NowMs(e->loop);
  c->ssl = SSL_new(e->ctx);
  if (c->ssl == nullptr || SSL_set_fd(c->ssl, fd) != 1 || uv_poll_init(e->loop, &c->client.poll, fd) != 0) {
    ERR_clear_error();
    if (c->ssl != nullptr) SSL_free(c->ssl);
    ::close(fd);
    delete c;
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // fails harmlessly on vsock and unix
  SSL_set_app_data(c->ssl, c);
  SSL_set_accept_state(c->ssl);
  c->client.poll.data = c;
  c->client.polled = true;
  c->next = e->head;
  if (e->head != nullptr) e->head->prev = c;
  e->head = c;
  e->openHandles++;
  Count(e, e->slots.accepted);
  ChangeActive(e, 1);
  Arm(c);
}

// True while a sibling that accepts holds more than kAcceptSlack connections fewer than this
// worker, for at most kYieldMaxMs in a row.
bool SiblingShouldAccept(Engine* e) {
  if (e->loads == nullptr) return false;
  if (e->granted > 0) {
    e->granted--;
    return false;
  }
  int32_t own = static_cast<int32_t>(e->active);
  int32_t fewest = own;
  for (uint32_t i = 0; i < e->loadCount; i++) {
    int32_t load = __atomic_load_n(&e->loads[i], __ATOMIC_RELAXED);
    if (load >= 0 && load < fewest) fewest = load;
  }
  if (own <= fewest + kAcceptSlack) {
    e->yieldingSince = -1;
    return false;
  }
  double now = static_cast<double>(uv_now(e->loop));
  if (e->yieldingSince < 0) e->yieldingSince = now;
  if (now - e->yieldingSince < kYieldMaxMs) return true;
  e->yieldingSince = -1;
  e->granted = kAcceptGrant;
  return false;
}

bool ListenerHasWaiting(Engine* e) {
  pollfd pending = {e->listener.fd, POLLIN, 0};
  return ::poll(&pending, 1, 0) > 0 && (pending.revents & POLLIN) != 0;
}

void EndYield(Engine* e) {
  uv_timer_stop(&e->yieldTimer);
  e->yielding = false;
  ArmListener(e);
}

void OnYieldTimer(uv_timer_t* timer) {
  Engine* e = static_cast<Engine*>(timer->data);
  // A sibling took what was waiting: the next arrival starts a yield of its own, and a lasting
  // skew (long-lived connections) is corrected one arrival at a time instead of ending in a grant.
  if (!ListenerHasWaiting(e)) {
    e->yieldingSince = -1;
    EndYield(e);
    return;
  }
  if (!SiblingShouldAccept(e)) EndYield(e);
}

void OnListenerPoll(uv_poll_t* poll, int status, int events) {
  Engine* e = static_cast<Engine*>(poll->data);
  if (status < 0 || !e->accepting) return;
  for (int i = 0; i < kMaxAcceptsPerPoll && e->accepting; i++) {
    if (SiblingShouldAccept(e)) {
      // Level-triggered: polling on would spin, so the listener waits for the timer's look again.
      e->yielding = true;
      ArmListener(e);
      uv_timer_start(&e->yieldTimer, OnYieldTimer, kYieldRecheckMs, kYieldRecheckMs);
      break;
    }
    int fd = ::accept4(e->listener.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      Accept(e, fd);
      continue;
    }
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      e->granted = 0;  // the grant is for what waited, not for later arrivals
      break;
    }
    // Out of fds or memory: stop polling (level-triggered, it would spin) until the next sweep.
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
      e->acceptPaused = true;
      PublishLoad(e);
      ArmListener(e);
      Emit(e, kEventAcceptPaused, err);
      break;
    }
    // EINTR, ECONNABORTED, and the errors of that one connection accept(2) passes on (ENETDOWN,
    // EPROTO, EHOSTUNREACH, ...): the next one may be fine.
  }
}

void OnSweep(uv_timer_t* timer) {
  Engine* e = static_cast<Engine*>(timer->data);
  double now = NowMs(e->loop);
  if (e->acceptPaused) {
    e->acceptPaused = false;
    PublishLoad(e);
    ArmListener(e);
  }
  Connection* c = e->head;
  while (c != nullptr) {
    Connection* next = c->next;
    // An event emitted below runs JS (and its microtasks), which may have destroyed a later one.
    if (Gone(c)) {
      c = next;
      continue;
    }
    if (c->moved != c->movedAtSweep) {
      c->movedAtSweep = c->moved;
      c->quietSince = now;
    }
    bool expired = false;
    switch (c->state) {
      case State::kHandshake:
      case State::kWaitCertificate:
        expired = now - c->startedAt >= e->handshakeTimeoutMs;
        break;
      case State::kConnecting:
        if (now - c->connectSince >= e->connectTimeoutMs) {
          Count(e, e->slots.appUnreachable);
          Destroy(c);
          Emit(e, kEventAppUnreachable, ETIMEDOUT);
        }
        break;
      case State::kWaitFirstByte:
      case State::kRelay:
        expired = now - c->quietSince >= e->idleTimeoutMs;
        break;
    }
    if (expired) Destroy(c);
    c = next;
  }
}

void CloseAll(Engine* e) {
  // By the links, not "while head": a connection inside a JS call is only marked, and stays listed.
  for (Connection* c = e->head; c != nullptr;) {
    Connection* next = c->next;
    Destroy(c);
    c = next;
  }
}

void ShutDown(Engine* e) {
  if (e->closing) return;
  e->closing = true;
  e->accepting = false;
  CloseAll(e);
  PublishLoad(e);
  CloseEngineHandle(e, reinterpret_cast<uv_handle_t*>(&e->listener.poll));
  CloseEngineHandle(e, reinterpret_cast<uv_handle_t*>(&e->sweep));
  CloseEngineHandle(e, reinterpret_cast<uv_handle_t*>(&e->yieldTimer));
}

void OnEnvTeardown(napi_async_cleanup_hook_handle, void* arg) {
  Engine* e = static_cast<Engine*>(arg);
  if (e->owner != nullptr) e->owner->engine_ = nullptr;
  e->owner = nullptr;
  ShutDown(e);
}

// --- JS API ------------------------------------------------------------------------------------

bool ReadNumber(const Napi::Object& options, const char* name, double* out) {
  Napi::Value value = options.Get(name);
  if (!value.IsNumber()) return false;
  *out = value.As<Napi::Number>().DoubleValue();
  return *out >= 0;
}

bool ReadSlot(const Napi::Object& slots, const char* name, uint32_t limit, uint32_t* out) {
  return ReadUint32(slots.Get(name), out) && *out < limit;
}

int AppAddressFromJs(const Napi::Value& value, sockaddr_storage* out, socklen_t* length) {
  if (!value.IsObject()) return -EINVAL;
  Napi::Object app = value.As<Napi::Object>();
  std::memset(out, 0, sizeof(*out));
  if (app.Get("path").IsString()) {
    std::string path = app.Get("path").As<Napi::String>().Utf8Value();
    auto* sun = reinterpret_cast<sockaddr_un*>(out);
    if (path.empty() || path.find('\0') != std::string::npos || path.size() >= sizeof(sun->sun_path)) return -EINVAL;
    sun->sun_family = AF_UNIX;
    std::memcpy(sun->sun_path, path.data(), path.size());
    *length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return 0;
  }
  uint32_t port;
  if (!app.Get("ip").IsString() || !ReadUint32(app.Get("port"), &port) || port == 0 || port > 65535) return -EINVAL;
  std::string ip = app.Get("ip").As<Napi::String>().Utf8Value();
  auto* v4 = reinterpret_cast<sockaddr_in*>(out);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(out);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    *length = sizeof(*v4);
  } else if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    *length = sizeof(*v6);
  } else {
    return -EINVAL;
  }
  return 0;
}

// The memory of a typed array the engine keeps writing to: only a SharedArrayBuffer's, which
// cannot be detached or resized under it (a plain ArrayBuffer can be transferred away). The
// pointer comes from the typed array itself, as Node-API's ArrayBuffer calls refuse a shared one.
bool SharedMemoryOf(napi_env env, const Napi::Value& value, napi_typedarray_type want, void** data, size_t* length) {
  napi_typedarray_type type;
  napi_value buffer = nullptr;
  bool plain = true;
  return value.IsTypedArray() &&
         napi_get_typedarray_info(env, value, &type, length, data, &buffer, nullptr) == napi_ok && type == want &&
         *data != nullptr && napi_is_arraybuffer(env, buffer, &plain) == napi_ok && !plain;
}

void ThrowConfig(Napi::Env env, const std::string& what) {
  Napi::TypeError error = Napi::TypeError::New(env, "TlsRelay: " + what);
  error.Set("code", Napi::String::New(env, "ERR_NATIVE_ARGUMENT"));
  error.ThrowAsJavaScriptException();
}

// new TlsRelay(listenFd, options, stats: Float64Array, callback). Takes the fd (closed by close()
// or at teardown) only once every option is valid.
TlsRelay::TlsRelay(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TlsRelay>(info) {
  Napi::Env env = info.Env();
  int fd;
  if (info.Length() < 4 || !ReadFd(info[0], &fd) || !info[1].IsObject() || !info[2].IsTypedArray() ||
      !info[3].IsFunction()) {
    ThrowConfig(env, "(listenFd, options, stats: Float64Array, callback)");
    return;
  }
  Napi::Object options = info[1].As<Napi::Object>();
  auto e = std::make_unique<Engine>();
  e->env = env;
  if (!ReadNumber(options, "handshakeTimeoutMs", &e->handshakeTimeoutMs) ||
      !ReadNumber(options, "idleTimeoutMs", &e->idleTimeoutMs) ||
      !ReadNumber(options, "connectTimeoutMs", &e->connectTimeoutMs) ||
      !ReadNumber(options, "maxConnections", &e->maxConnections)) {
    ThrowConfig(env, "handshakeTimeoutMs, idleTimeoutMs, connectTimeoutMs and maxConnections are needed");
    return;
  }
  e->firstByte = options.Get("firstByte").ToBoolean().Value();
  if (AppAddressFromJs(options.Get("app"), &e->app, &e->appLength) != 0) {
    ThrowConfig(env, "app must be {ip, port} or {path}");
    return;
  }
  if (!ReadString(options.Get("nonceMarker"), 64, &e->nonceMarker) || e->nonceMarker.empty()) {
    ThrowConfig(env, "nonceMarker must be a short string");
    return;
  }
  Napi::Value alpn = options.Get("alpn");
  if (!alpn.IsBuffer() || alpn.As<Napi::Buffer<unsigned char>>().Length() == 0) {
    ThrowConfig(env, "alpn must be a non-empty Buffer in wire format");
    return;
  }
  auto alpnBytes = alpn.As<Napi::Buffer<unsigned char>>();
  e->alpn.assign(alpnBytes.Data(), alpnBytes.Data() + alpnBytes.Length());
  std::string ciphers, ciphersuites;
  if (!ReadString(options.Get("ciphers"), 4096, &ciphers) ||
      !ReadString(options.Get("ciphersuites"), 4096, &ciphersuites)) {
    ThrowConfig(env, "ciphers and ciphersuites must be strings");
    return;
  }
  Napi::Value bounds = options.Get("buckets");
  if (!bounds.IsArray() || bounds.As<Napi::Array>().Length() > kMaxHistogramBuckets) {
    ThrowConfig(env, "buckets must be an array of at most 32 bounds");
    return;
  }
  for (uint32_t i = 0; i < bounds.As<Napi::Array>().Length(); i++) {
    Napi::Value bound = bounds.As<Napi::Array>().Get(i);
    e->bucketBounds.push_back(bound.IsNumber() ? bound.As<Napi::Number>().DoubleValue() : 0);
  }
  Napi::TypedArray statsArray = info[2].As<Napi::TypedArray>();
  if (statsArray.TypedArrayType() != napi_float64_array || !options.Get("slots").IsObject()) {
    ThrowConfig(env, "stats must be a Float64Array and slots an object");
    return;
  }
  uint32_t size = static_cast<uint32_t>(statsArray.ElementLength());
  Napi::Object slots = options.Get("slots").As<Napi::Object>();
  StatSlots& s = e->slots;
  if (!ReadSlot(slots, "accepted", size, &s.accepted) || !ReadSlot(slots, "active", size, &s.active) ||
      !ReadSlot(slots, "refusedOverCap", size, &s.refusedOverCap) ||
      !ReadSlot(slots, "appUnreachable", size, &s.appUnreachable) ||
      !ReadSlot(slots, "handshakesOk", size, &s.handshakesOk) ||
      !ReadSlot(slots, "handshakesFailed", size, &s.handshakesFailed) ||
      !ReadSlot(slots, "handshakeSum", size, &s.handshakeSum) ||
      !ReadSlot(slots, "handshakeCount", size, &s.handshakeCount) ||
      !ReadSlot(slots, "handshakeBuckets", size, &s.handshakeBuckets) ||
      s.handshakeBuckets + e->bucketBounds.size() > size) {
    ThrowConfig(env, "slots must name an index of stats for every counter");
    return;
  }
  void* statsData = nullptr;
  if (!SharedMemoryOf(env, statsArray, napi_float64_array, &statsData, nullptr)) {
    ThrowConfig(env, "stats must be a Float64Array over a SharedArrayBuffer");
    return;
  }
  e->stats = static_cast<double*>(statsData);
  statsRef_ = Napi::Persistent(statsArray.As<Napi::Object>());
  Napi::Value balance = options.Get("balance");
  if (!balance.IsUndefined()) {
    Napi::Value loads = balance.IsObject() ? balance.As<Napi::Object>().Get("loads") : env.Undefined();
    void* loadsData = nullptr;
    size_t loadCount = 0;
    if (!SharedMemoryOf(env, loads, napi_int32_array, &loadsData, &loadCount) ||
        !ReadUint32(balance.As<Napi::Object>().Get("index"), &e->loadIndex) || e->loadIndex >= loadCount) {
      ThrowConfig(env, "balance must be {loads: Int32Array over a SharedArrayBuffer, index} with index inside loads");
      return;
    }
    e->loads = static_cast<int32_t*>(loadsData);
    e->loadCount = static_cast<uint32_t>(loadCount);
    loadsRef_ = Napi::Persistent(loads.As<Napi::Object>());
  }

  ERR_clear_error();
  e->ctx = SSL_CTX_new(TLS_server_method());
  bool ok = e->ctx != nullptr && SSL_CTX_set_min_proto_version(e->ctx, TLS1_2_VERSION) == 1 &&
            (ciphers.empty() || SSL_CTX_set_cipher_list(e->ctx, ciphers.c_str()) == 1) &&
            (ciphersuites.empty() || SSL_CTX_set_ciphersuites(e->ctx, ciphersuites.c_str()) == 1);
  ERR_clear_error();
  if (!ok) {
    if (e->ctx != nullptr) SSL_CTX_free(e->ctx);
    ThrowConfig(env, "OpenSSL refused the TLS settings (ciphers or ciphersuites)");
    return;
  }
  // Buffers of idle connections go back to the allocator; partial writes and moving buffers
  // because a write resumed after EAGAIN restarts from the relay's own copy.
  SSL_CTX_set_mode(e->ctx,
                   SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // A FIN without close_notify ends the stream, as it does for Node's TLSSocket.
  SSL_CTX_set_options(e->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  // No server-side session cache: thousands of clients must not grow memory (tickets still resume).
  SSL_CTX_set_session_cache_mode(e->ctx, SSL_SESS_CACHE_OFF);
  // One read(2) takes as many records as the buffer holds instead of a header and a body each.
  SSL_CTX_set_read_ahead(e->ctx, 1);
  SSL_CTX_set_client_hello_cb(e->ctx, OnClientHello, nullptr);
  SSL_CTX_set_alpn_select_cb(e->ctx, OnAlpn, e.get());

  if (napi_get_uv_event_loop(env, &e->loop) != napi_ok || e->loop == nullptr) {
    SSL_CTX_free(e->ctx);
    Napi::Error::New(env, "no libuv loop for this environment").ThrowAsJavaScriptException();
    return;
  }
  e->listener.fd = fd;
  // A failed uv_poll_init registers nothing; uv_timer_init cannot fail. In this order an error
  // leaves no handle on the loop pointing into the engine freed below.
  if (uv_poll_init(e->loop, &e->listener.poll, fd) != 0) {
    SSL_CTX_free(e->ctx);
    Napi::Error::New(env, "uv_poll_init failed on the listening fd").ThrowAsJavaScriptException();
    return;
  }
  uv_timer_init(e->loop, &e->sweep);
  uv_timer_init(e->loop, &e->yieldTimer);
  e->listener.poll.data = e.get();
  e->listener.polled = true;
  e->sweep.data = e.get();
  e->yieldTimer.data = e.get();
  e->openHandles = 3;
  uv_unref(reinterpret_cast<uv_handle_t*>(&e->sweep));
  callback_ = Napi::Persistent(info[3].As<Napi::Function>());
  napi_value resourceName = nullptr;
  napi_create_string_utf8(env, "EnclaveTlsRelay", NAPI_AUTO_LENGTH, &resourceName);
  napi_async_init(env, Value(), resourceName, &asyncContext_);
  e->owner = this;
  engine_ = e.release();
  napi_add_async_cleanup_hook(env, OnEnvTeardown, engine_, &engine_->cleanupHook);
  Ref();  // alive until every handle is closed, like Node's own handles
}

void TlsRelay::Finished() {
  engine_ = nullptr;
  napi_env env = Env();
  if (CanCallIntoJs(env)) {
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) == napi_ok) {
      EmitEvent(kEventClosed, nullptr, nullptr);
      napi_close_handle_scope(env, scope);
    }
    if (asyncContext_ != nullptr) napi_async_destroy(env, asyncContext_);
    asyncContext_ = nullptr;
  }
  callback_.Reset();
  statsRef_.Reset();
  loadsRef_.Reset();
  Unref();
}

// setBase(credentials): the certificate for every server name that is not a nonce's, from the next
// handshake on.
Napi::Value TlsRelay::SetBase(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (engine_ == nullptr || engine_->closing) return Napi::Boolean::New(env, false);
  Credentials* credentials = Credentials::From(env, info[0]);
  if (credentials == nullptr) {
    ThrowConfig(env, "setBase(credentials) needs TlsCredentials");
    return env.Undefined();
  }
  bool ok = credentials->ServeOn(engine_->ctx);
  ERR_clear_error();
  return Napi::Boolean::New(env, ok);
}

// start(): accepting begins; a base certificate must have been set.
Napi::Value TlsRelay::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Engine* e = engine_;
  if (e == nullptr || e->closing) return Napi::Boolean::New(env, false);
  if (SSL_CTX_get0_certificate(e->ctx) == nullptr) {
    ThrowConfig(env, "start() needs setBase() first");
    return env.Undefined();
  }
  e->accepting = true;
  PublishLoad(e);
  ArmListener(e);
  double period = std::max(1.0, std::min({e->handshakeTimeoutMs, e->idleTimeoutMs, e->connectTimeoutMs}) / 4);
  if (!e->sweepStarted)
    uv_timer_start(&e->sweep, OnSweep, static_cast<uint64_t>(period), static_cast<uint64_t>(period));
  e->sweepStarted = true;
  return Napi::Boolean::New(env, true);
}

// provide(id, credentials | null): the answer to a certificate event; null serves the base
// certificate. False when the connection is gone (closed or timed out meanwhile).
Napi::Value TlsRelay::Provide(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Engine* e = engine_;
  if (e == nullptr || !info[0].IsNumber()) return Napi::Boolean::New(env, false);
  auto found = e->waiting.find(info[0].As<Napi::Number>().DoubleValue());
  if (found == e->waiting.end()) return Napi::Boolean::New(env, false);
  Connection* c = found->second;
  e->waiting.erase(found);
  Credentials* credentials = Credentials::From(env, info[1]);
  if (credentials != nullptr) c->chosenRef = Napi::Persistent(info[1].As<Napi::Object>());
  c->chosen = credentials;
  c->certificateChosen = true;
  if (!c->inHello) {
    // Resume the handshake where the ClientHello callback paused it.
    c->state = State::kHandshake;
    Run(c);
  }
  return Napi::Boolean::New(env, true);
}

// stopAccepting(): the listener is closed; open connections go on.
Napi::Value TlsRelay::StopAccepting(const Napi::CallbackInfo& info) {
  Engine* e = engine_;
  if (e != nullptr && e->accepting) {
    e->accepting = false;
    e->yieldingSince = -1;
    e->granted = 0;
    PublishLoad(e);
    EndYield(e);
  }
  return info.Env().Undefined();
}

// close(): every connection is cut and every fd closed; the closed event follows.
Napi::Value TlsRelay::Close(const Napi::CallbackInfo& info) {
  if (engine_ != nullptr) ShutDown(engine_);
  return info.Env().Undefined();
}

}  // namespace

void InitTlsRelay(Napi::Env env, Napi::Object exports) {
  exports.Set("TlsRelay", TlsRelay::Define(env));
  exports.Set("TlsCredentials", Credentials::Define(env, env.GetInstanceData<AddonData>()));
}

}  // namespace enclave
