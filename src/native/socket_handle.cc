#include "socket_handle.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "addon_data.h"
#include "errno_value.h"
#include "socket_address.h"

namespace enclave {
namespace {

// Per readiness callback: bounded so one busy socket cannot starve the rest of the event loop;
// level-triggered polling brings us back for whatever is left.
constexpr int kMaxReadsPerPoll = 16;
constexpr int kMaxAcceptsPerPoll = 64;
constexpr int kMaxSendsPerFlush = 64;
constexpr uint32_t kMaxBacklog = 65535;

uv_handle_t* AsHandle(PollBox* box) { return reinterpret_cast<uv_handle_t*>(&box->poll); }

// The poll path below uses plain Node-API calls with their status checked: it can run while a
// worker is being terminated, when node-addon-api's error helpers would turn a refused call into a
// fatal error.
napi_value Int(napi_env env, int value) {
  napi_value result = nullptr;
  napi_create_int32(env, value, &result);
  return result;
}

napi_value Text(napi_env env, const char* text) {
  napi_value result = nullptr;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &result);
  return result;
}

}  // namespace

Napi::Function SocketHandle::Define(Napi::Env env) {
  // One method per line reads as the table it is.
  // clang-format off
  Napi::Function constructor = DefineClass(
      env, "Handle",
      {
          InstanceMethod("setCallback", &SocketHandle::SetCallback),
          InstanceMethod("bind", &SocketHandle::Bind),
          InstanceMethod("listen", &SocketHandle::Listen),
          InstanceMethod("resumeAccept", &SocketHandle::ResumeAccept),
          InstanceMethod("connect", &SocketHandle::Connect),
          InstanceMethod("readStart", &SocketHandle::ReadStart),
          InstanceMethod("readStop", &SocketHandle::ReadStop),
          InstanceMethod("writev", &SocketHandle::Writev),
          InstanceMethod("shutdown", &SocketHandle::Shutdown),
          InstanceMethod("close", &SocketHandle::Close),
          InstanceMethod("ref", &SocketHandle::RefLoop),
          InstanceMethod("unref", &SocketHandle::UnrefLoop),
          InstanceMethod("getsockname", &SocketHandle::GetSockName),
          InstanceMethod("getpeername", &SocketHandle::GetPeerName),
          InstanceAccessor("fd", &SocketHandle::GetFd, nullptr),
      });
  // clang-format on
  return constructor;
}

// new Handle(fd, family): takes ownership of a non-blocking socket fd as soon as the arguments
// are valid; if anything fails after that, the fd is closed here, so ownership is never in doubt.
SocketHandle::SocketHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SocketHandle>(info) {
  Napi::Env env = info.Env();
  int fd;
  if (info.Length() < 2 || !ReadFd(info[0], &fd) || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "Handle(fd, family) needs a socket fd and an address family")
        .ThrowAsJavaScriptException();
    return;
  }
  family_ = info[1].As<Napi::Number>().Int32Value();
  void* data = nullptr;
  if (napi_get_instance_data(env, &data) == napi_ok && data != nullptr) {
    AddonData* addon = static_cast<AddonData*>(data);
    if (addon->unclaimedAcceptFd == fd) addon->unclaimedAcceptFd = -1;
  }

  // A terminating worker refuses napi_wrap; node-addon-api then swallows the error and leaves
  // this object unwrapped. Touching the reference after that would be a fatal error.
  if (static_cast<napi_ref>(*this) == nullptr) {
    ::close(fd);
    return;
  }

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    ::close(fd);
    Napi::Error::New(env, "no libuv loop for this environment").ThrowAsJavaScriptException();
    return;
  }
  auto* box = new PollBox();
  box->fd = fd;
  box->owner = this;
  int status = uv_poll_init(loop, &box->poll, fd);
  if (status != 0) {
    delete box;
    ::close(fd);
    Napi::Error::New(env, std::string("uv_poll_init: ") + uv_err_name(status)).ThrowAsJavaScriptException();
    return;
  }
  box->poll.data = box;
  box_ = box;

  napi_value resourceName = nullptr;
  napi_create_string_utf8(env, "EnclaveNativeSocket", NAPI_AUTO_LENGTH, &resourceName);
  napi_async_init(env, Value(), resourceName, &asyncContext_);
  // The hook gets the box, not this object: the box outlives the JS object when it is finalized
  // while the close is still in flight.
  napi_add_async_cleanup_hook(env, OnEnvTeardown, box, &box->cleanupHook);
  Napi::ObjectWrap<SocketHandle>::Ref();
}

// Only reached with an open box when the environment is being torn down (the JS object is
// strongly referenced until the close completes otherwise).
SocketHandle::~SocketHandle() { Detach(); }

// Hands the fd and the poll handle to libuv's close path without any further call into JS: used
// when the environment (or the JS object) goes away before close() finished.
void SocketHandle::Detach() {
  if (box_ == nullptr) return;
  box_->owner = nullptr;
  if (!closing_) {
    closing_ = true;
    uv_poll_stop(&box_->poll);
    uv_close(AsHandle(box_), OnPollClosed);
  }
  box_ = nullptr;
}

void SocketHandle::OnEnvTeardown(napi_async_cleanup_hook_handle, void* arg) {
  // Completion is signalled from OnPollClosed, which every box reaches exactly once.
  SocketHandle* owner = static_cast<PollBox*>(arg)->owner;
  if (owner != nullptr) owner->Detach();
}

Napi::Value SocketHandle::SetCallback(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) {
    Napi::TypeError::New(info.Env(), "setCallback(fn) needs a function").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  callback_ = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value SocketHandle::Bind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsOpen()) return ErrnoValue(env, EBADF);
  SocketAddress address;
  int status = SocketAddressFromJs(family_, info[0], &address);
  if (status != 0) return Napi::Number::New(env, status);
  if (::bind(box_->fd, reinterpret_cast<sockaddr*>(&address.storage), address.length) != 0) {
    return ErrnoValue(env, errno);
  }
  return Napi::Number::New(env, 0);
}

Napi::Value SocketHandle::Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsOpen()) return ErrnoValue(env, EBADF);
  uint32_t backlog;
  if (!ReadUint32(info[0], &backlog) || backlog == 0) return ErrnoValue(env, EINVAL);
  if (::listen(box_->fd, static_cast<int>(std::min(backlog, kMaxBacklog))) != 0) return ErrnoValue(env, errno);
  listening_ = true;
  Rearm();
  return Napi::Number::New(env, 0);
}

Napi::Value SocketHandle::ResumeAccept(const Napi::CallbackInfo& info) {
  acceptPaused_ = false;
  Rearm();
  return info.Env().Undefined();
}

// 0: connected now (typical for AF_UNIX); 1: in progress, kEventConnect follows; <0: -errno.
// AF_UNIX reports a full backlog as EAGAIN rather than EINPROGRESS; like libuv, that is an error.
Napi::Value SocketHandle::Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsOpen()) return ErrnoValue(env, EBADF);
  SocketAddress address;
  int status = SocketAddressFromJs(family_, info[0], &address);
  if (status != 0) return Napi::Number::New(env, status);
  // Non-blocking, so it never sleeps and cannot be interrupted (no EINTR retry).
  if (::connect(box_->fd, reinterpret_cast<sockaddr*>(&address.storage), address.length) == 0) {
    return Napi::Number::New(env, 0);
  }
  if (errno != EINPROGRESS) return ErrnoValue(env, errno);
  connecting_ = true;
  Rearm();
  return Napi::Number::New(env, 1);
}

Napi::Value SocketHandle::ReadStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsOpen()) return ErrnoValue(env, EBADF);
  // After EOF the fd stays readable forever (level-triggered); polling it again would spin.
  if (!eof_) reading_ = true;
  Rearm();
  return Napi::Number::New(env, 0);
}

// The backpressure path: with readable polling off, the kernel buffers fill and the peer blocks.
Napi::Value SocketHandle::ReadStop(const Napi::CallbackInfo& info) {
  reading_ = false;
  Rearm();
  return Napi::Number::New(info.Env(), 0);
}

// writev([Buffer...]): 0 when the kernel took everything, 1 when the rest is pending (kEventWrite
// follows), <0: -errno. Only one writev may be pending; stream.Writable already serializes them.
Napi::Value SocketHandle::Writev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsOpen()) return ErrnoValue(env, EBADF);
  if (!pendingIov_.empty()) return ErrnoValue(env, EBUSY);
  if (!info[0].IsArray()) {
    Napi::TypeError::New(env, "writev(chunks) needs an array of Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array chunks = info[0].As<Napi::Array>();
  const uint32_t count = chunks.Length();
  pendingIov_.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    Napi::Value chunk = chunks.Get(i);
    if (!chunk.IsTypedArray() || chunk.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      pendingIov_.clear();
      Napi::TypeError::New(env, "writev(chunks) needs an array of Uint8Array").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Uint8Array bytes = chunk.As<Napi::Uint8Array>();
    if (bytes.ByteLength() > 0) pendingIov_.push_back({bytes.Data(), bytes.ByteLength()});
  }
  pendingIndex_ = 0;
  int status = FlushPending();
  if (status == 1) {
    writeRef_ = Napi::Persistent(chunks.As<Napi::Object>());
    Rearm();
    return Napi::Number::New(env, 1);
  }
  pendingIov_.clear();
  return Napi::Number::New(env, status);
}

// 0: all pending bytes written; 1: the kernel buffer is full (or this round's bound was hit); <0: -errno.
int SocketHandle::FlushPending() {
  for (int round = 0; round < kMaxSendsPerFlush; ++round) {
    if (pendingIndex_ == pendingIov_.size()) return 0;
    msghdr message{};
    message.msg_iov = &pendingIov_[pendingIndex_];
    message.msg_iovlen = std::min<size_t>(pendingIov_.size() - pendingIndex_, IOV_MAX);
    // sendmsg rather than writev: MSG_NOSIGNAL turns a dead peer into EPIPE instead of SIGPIPE.
    ssize_t written = ::sendmsg(box_->fd, &message, MSG_NOSIGNAL);
    if (written < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
      return -errno;
    }
    AdvancePending(static_cast<size_t>(written));
  }
  return pendingIndex_ == pendingIov_.size() ? 0 : 1;
}

void SocketHandle::AdvancePending(size_t written) {
  while (written > 0 && pendingIndex_ < pendingIov_.size()) {
    iovec& current = pendingIov_[pendingIndex_];
    if (written >= current.iov_len) {
      written -= current.iov_len;
      ++pendingIndex_;
    } else {
      current.iov_base = static_cast<char*>(current.iov_base) + written;
      current.iov_len -= written;
      written = 0;
    }
  }
}

void SocketHandle::DropPendingWrite() {
  pendingIov_.clear();
  pendingIndex_ = 0;
  writeRef_.Reset();
}

Napi::Value SocketHandle::Shutdown(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsOpen()) return ErrnoValue(env, EBADF);
  if (::shutdown(box_->fd, SHUT_WR) != 0) return ErrnoValue(env, errno);
  return Napi::Number::New(env, 0);
}

// Asynchronous: kEventClose is delivered once libuv released the poll handle and the fd is closed.
Napi::Value SocketHandle::Close(const Napi::CallbackInfo& info) {
  if (box_ == nullptr || closing_) return info.Env().Undefined();
  closing_ = true;
  listening_ = connecting_ = reading_ = false;
  DropPendingWrite();
  // Stop first: libuv must drop the fd from epoll before the fd number can be reused.
  uv_poll_stop(&box_->poll);
  uv_close(AsHandle(box_), OnPollClosed);
  return info.Env().Undefined();
}

void SocketHandle::OnPollClosed(uv_handle_t* handle) {
  auto* box = static_cast<PollBox*>(handle->data);
  // On Linux the fd is released even when close() reports EINTR, so there is nothing to retry.
  ::close(box->fd);
  SocketHandle* owner = box->owner;
  // Unregisters the hook, or tells a tearing-down environment that this handle is done.
  if (box->cleanupHook != nullptr) napi_remove_async_cleanup_hook(box->cleanupHook);
  delete box;
  if (owner != nullptr) owner->FinishClose();
}

void SocketHandle::FinishClose() {
  box_ = nullptr;
  napi_env env = Env();
  if (CanCallIntoJs(env)) {
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) == napi_ok) {
      Emit(kEventClose);
      napi_close_handle_scope(env, scope);
    }
    if (asyncContext_ != nullptr) {
      napi_async_destroy(env, asyncContext_);
      asyncContext_ = nullptr;
    }
  }
  callback_.Reset();
  // From here the JS object may be garbage collected like any other.
  Napi::ObjectWrap<SocketHandle>::Unref();
}

// Mirrors uv_ref/uv_unref: an active poll keeps the process alive unless unref'ed.
Napi::Value SocketHandle::RefLoop(const Napi::CallbackInfo& info) {
  if (box_ != nullptr) uv_ref(AsHandle(box_));
  return info.Env().Undefined();
}

Napi::Value SocketHandle::UnrefLoop(const Napi::CallbackInfo& info) {
  if (box_ != nullptr) uv_unref(AsHandle(box_));
  return info.Env().Undefined();
}

Napi::Value SocketHandle::GetSockName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsOpen()) return ErrnoValue(env, EBADF);
  sockaddr_storage storage{};
  socklen_t length = sizeof(storage);
  if (::getsockname(box_->fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) return ErrnoValue(env, errno);
  return SocketAddressToJs(env, storage, length);
}

Napi::Value SocketHandle::GetPeerName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsOpen()) return ErrnoValue(env, EBADF);
  sockaddr_storage storage{};
  socklen_t length = sizeof(storage);
  if (::getpeername(box_->fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) return ErrnoValue(env, errno);
  return SocketAddressToJs(env, storage, length);
}

Napi::Value SocketHandle::GetFd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), IsOpen() ? box_->fd : -1);
}

int SocketHandle::Interest() const {
  if (!IsOpen()) return 0;
  int events = 0;
  if (reading_ || (listening_ && !acceptPaused_)) events |= UV_READABLE;
  if (connecting_ || !pendingIov_.empty()) events |= UV_WRITABLE;
  return events;
}

// A stopped poll handle does not keep the loop alive, so an idle socket (not reading, nothing to
// write) lets the process exit, as an idle net.Socket does.
void SocketHandle::Rearm() {
  if (!IsOpen()) return;
  int wanted = Interest();
  if (wanted == armed_) return;
  if (wanted == 0) {
    uv_poll_stop(&box_->poll);
  } else {
    uv_poll_start(&box_->poll, wanted, OnPoll);
  }
  armed_ = wanted;
}

void SocketHandle::OnPoll(uv_poll_t* poll, int status, int events) {
  SocketHandle* self = static_cast<PollBox*>(poll->data)->owner;
  if (self == nullptr || !self->IsOpen()) return;
  napi_env env = self->Env();
  napi_handle_scope scope;
  if (!CanCallIntoJs(env) || napi_open_handle_scope(env, &scope) != napi_ok) {
    // Shutting down: nobody can receive events any more, so just release the fd.
    self->Detach();
    return;
  }
  if (status == UV_EBADF) {
    // libuv reports POLLERR this way and has already stopped the handle. The socket error itself
    // is surfaced by the pending read, write or connect syscall, so run whatever is waiting.
    self->armed_ = 0;
    self->Dispatch(self->Interest());
  } else if (status < 0) {
    self->Emit(kEventError, Int(env, status), Text(env, "poll"));
  } else {
    self->Dispatch(events);
  }
  self->Rearm();
  napi_close_handle_scope(env, scope);
}

// Each step re-checks IsOpen(): any Emit may run JS that closes the handle.
void SocketHandle::Dispatch(int events) {
  if ((events & UV_WRITABLE) && connecting_) {
    FinishConnect();
    return;
  }
  if ((events & UV_READABLE) && IsOpen()) {
    if (listening_) {
      AcceptPending();
    } else if (reading_) {
      ReadPending();
    }
  }
  if ((events & UV_WRITABLE) && IsOpen() && !pendingIov_.empty()) ContinueWrite();
}

void SocketHandle::FinishConnect() {
  int error = 0;
  socklen_t length = sizeof(error);
  if (::getsockopt(box_->fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
  connecting_ = false;
  Emit(kEventConnect, Int(Env(), -error));
}

// Accepted fds go to JS as numbers and JS wraps them in a Handle. Constructing the Handle from
// here instead would run a JS constructor from C++, which is what fails while a worker terminates.
void SocketHandle::AcceptPending() {
  napi_env env = Env();
  void* data = nullptr;
  if (napi_get_instance_data(env, &data) != napi_ok || data == nullptr) return;
  AddonData* addon = static_cast<AddonData*>(data);
  for (int i = 0; i < kMaxAcceptsPerPoll && IsOpen() && listening_ && !acceptPaused_; ++i) {
    int fd = ::accept4(box_->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      addon->unclaimedAcceptFd = fd;
      Emit(kEventConnection, Int(env, fd));
      if (addon->unclaimedAcceptFd == fd) ::close(fd);
      addon->unclaimedAcceptFd = -1;
      continue;
    }
    int error = errno;
    if (error == EAGAIN || error == EWOULDBLOCK) return;
    // Failures of one connection that the listener survives.
    if (error == EINTR || error == ECONNABORTED || error == EPROTO || error == EPERM) continue;
    if (error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM) {
      // The pending connection stays queued and the fd stays readable: without a pause this
      // would spin at 100% CPU until an fd frees up. JS resumes after a delay.
      acceptPaused_ = true;
      Emit(kEventAcceptPaused, Int(env, -error));
      return;
    }
    Emit(kEventError, Int(env, -error), Text(env, "accept"));
    return;
  }
}

void SocketHandle::ReadPending() {
  napi_env env = Env();
  void* data = nullptr;
  if (napi_get_instance_data(env, &data) != napi_ok || data == nullptr) return;
  std::vector<char>& scratch = static_cast<AddonData*>(data)->readScratch;
  for (int i = 0; i < kMaxReadsPerPoll && IsOpen() && reading_; ++i) {
    ssize_t count = ::read(box_->fd, scratch.data(), scratch.size());
    if (count > 0) {
      napi_value chunk = nullptr;
      if (napi_create_buffer_copy(env, static_cast<size_t>(count), scratch.data(), nullptr, &chunk) != napi_ok) {
        // Bytes already taken from the kernel cannot be handed over: the stream is broken.
        reading_ = false;
        Emit(kEventError, Int(env, -ENOMEM), Text(env, "read"));
        return;
      }
      Emit(kEventRead, chunk);
      // A short read means the queue was drained just now; readiness will tell us about more.
      if (static_cast<size_t>(count) < scratch.size()) return;
      continue;
    }
    if (count == 0) {
      reading_ = false;
      eof_ = true;
      Emit(kEventEof);
      return;
    }
    int error = errno;
    if (error == EINTR) continue;
    if (error == EAGAIN || error == EWOULDBLOCK) return;
    reading_ = false;
    Emit(kEventError, Int(env, -error), Text(env, "read"));
    return;
  }
}

void SocketHandle::ContinueWrite() {
  int status = FlushPending();
  if (status == 1) return;
  // Cleared before the callback: the JS write callback may start the next writev synchronously.
  DropPendingWrite();
  Emit(kEventWrite, Int(Env(), status));
}

// MakeCallback rather than a plain call, so process.nextTick and promise jobs queued by the
// handler run right after it, as they do for Node's own socket callbacks. Returns the callback's
// result, or nullptr when it could not run or threw.
napi_value SocketHandle::Emit(int type, napi_value a, napi_value b) {
  if (callback_.IsEmpty()) return nullptr;
  return MakeEventCallback(Env(), static_cast<napi_ref>(*this), static_cast<napi_ref>(callback_), asyncContext_, type,
                           a, b);
}

}  // namespace enclave
