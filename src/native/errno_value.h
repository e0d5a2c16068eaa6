#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace enclave {

// Every native call reports failure as a negative errno number, as libuv and Node's own bindings do;
// native-binding.ts turns it into a coded NativeError, so no error text is formatted in C++.
inline Napi::Value ErrnoValue(Napi::Env env, int err) { return Napi::Number::New(env, -err); }

// An exception thrown by JS called from a libuv callback has no JS caller to catch it: hand it to
// Node's uncaughtException machinery, exactly as an exception thrown in a net.Socket handler would go.
void ReportPendingException(napi_env env);

// While an environment shuts down (worker.terminate(), process teardown), Node still runs the loop
// to close its own handles but refuses calls into JS; true when a call would be accepted.
bool CanCallIntoJs(napi_env env);

// Calls `callback` with `receiver` as this and (type, a, b) as arguments, undefined for a null a or b,
// from a libuv callback: an exception goes to ReportPendingException. The result, or null.
napi_value MakeEventCallback(napi_env env, napi_ref receiver, napi_ref callback, napi_async_context context, int type,
                             napi_value a, napi_value b);

// Strict argument readers: they reject fractions, negatives and out-of-range values instead of
// letting them wrap around into a different fd, port or size.
bool ReadUint32(const Napi::Value& value, uint32_t* out);
bool ReadFd(const Napi::Value& value, int* out);
bool ReadString(const Napi::Value& value, size_t maxBytes, std::string* out);

}  // namespace enclave
