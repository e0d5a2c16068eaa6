#pragma once

#include <napi.h>
#include <sys/uio.h>
#include <uv.h>

#include <cstddef>
#include <vector>

namespace enclave {

// Events passed to the JS callback as (type, a, b). The numbers are mirrored by NativeEvent in
// native-binding.ts.
enum EventType : int {
  kEventRead = 1,          // a: Buffer with the bytes read
  kEventEof = 2,           // the peer shut down its write side
  kEventError = 3,         // a: -errno, b: syscall name; the socket is unusable
  kEventWrite = 4,         // a: 0 or -errno; the pending writev finished
  kEventConnect = 5,       // a: 0 or -errno; the non-blocking connect finished
  kEventConnection = 6,    // a: the accepted fd, closed by the addon unless JS wraps it in a Handle
  kEventAcceptPaused = 7,  // a: -errno (EMFILE, ENFILE, ...); accepting resumes on resumeAccept()
  kEventClose = 8,         // the fd is closed; no further events
};

class SocketHandle;

// libuv needs the uv_poll_t memory until its close callback runs, and the fd must stay open
// until the poll registration is gone, so both live here and outlive the JS object if need be.
struct PollBox {
  uv_poll_t poll;
  int fd;
  SocketHandle* owner;  // null once the JS object is finalized or the environment tears down
  // Registered for the handle's whole life: when a worker thread's environment tears down, Node
  // waits for it, so the close callback runs before the addon's code is unloaded.
  napi_async_cleanup_hook_handle cleanupHook;
};

// One AF_UNIX or AF_VSOCK stream socket (listening or connected) driven by uv_poll_t, because
// libuv's stream handles cannot wrap AF_VSOCK (uv_guess_handle says UNKNOWN).
//
// The JS object is kept alive (strong reference) from construction until the close callback,
// like Node's own handles, so an open fd is never lost to garbage collection.
class SocketHandle : public Napi::ObjectWrap<SocketHandle> {
 public:
  static Napi::Function Define(Napi::Env env);

  explicit SocketHandle(const Napi::CallbackInfo& info);
  ~SocketHandle() override;

 private:
  // JS methods; failures are returned as -errno numbers.
  Napi::Value SetCallback(const Napi::CallbackInfo& info);
  Napi::Value Bind(const Napi::CallbackInfo& info);
  Napi::Value Listen(const Napi::CallbackInfo& info);
  Napi::Value ResumeAccept(const Napi::CallbackInfo& info);
  Napi::Value Connect(const Napi::CallbackInfo& info);
  Napi::Value ReadStart(const Napi::CallbackInfo& info);
  Napi::Value ReadStop(const Napi::CallbackInfo& info);
  Napi::Value Writev(const Napi::CallbackInfo& info);
  Napi::Value Shutdown(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value RefLoop(const Napi::CallbackInfo& info);
  Napi::Value UnrefLoop(const Napi::CallbackInfo& info);
  Napi::Value GetSockName(const Napi::CallbackInfo& info);
  Napi::Value GetPeerName(const Napi::CallbackInfo& info);
  Napi::Value GetFd(const Napi::CallbackInfo& info);

  static void OnPoll(uv_poll_t* poll, int status, int events);
  static void OnPollClosed(uv_handle_t* handle);
  static void OnEnvTeardown(napi_async_cleanup_hook_handle hook, void* arg);

  bool IsOpen() const { return box_ != nullptr && !closing_; }
  int Interest() const;
  void Rearm();
  void Dispatch(int events);
  void FinishConnect();
  void AcceptPending();
  void ReadPending();
  void ContinueWrite();
  int FlushPending();
  void AdvancePending(size_t written);
  void DropPendingWrite();
  void FinishClose();
  void Detach();
  napi_value Emit(int type, napi_value a = nullptr, napi_value b = nullptr);

  PollBox* box_ = nullptr;
  int family_ = 0;
  int armed_ = 0;  // the events uv_poll is currently started with
  bool closing_ = false;
  bool listening_ = false;
  bool acceptPaused_ = false;
  bool connecting_ = false;
  bool reading_ = false;
  bool eof_ = false;

  // The one in-flight writev: iovecs point into the JS buffers, which writeRef_ keeps alive
  // until the kernel took every byte, so large writes are never copied.
  std::vector<iovec> pendingIov_;
  size_t pendingIndex_ = 0;
  Napi::ObjectReference writeRef_;

  Napi::FunctionReference callback_;
  napi_async_context asyncContext_ = nullptr;
};

}  // namespace enclave
