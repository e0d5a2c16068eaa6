#include "errno_value.h"

#include <climits>
#include <cmath>

namespace enclave {

void ReportPendingException(napi_env env) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) != napi_ok || !pending) return;
  napi_value exception;
  if (napi_get_and_clear_last_exception(env, &exception) != napi_ok) return;
  napi_fatal_exception(env, exception);
}

bool ReadUint32(const Napi::Value& value, uint32_t* out) {
  if (!value.IsNumber()) return false;
  double number = value.As<Napi::Number>().DoubleValue();
  if (!(number >= 0 && number <= 4294967295.0) || std::floor(number) != number) return false;
  *out = static_cast<uint32_t>(number);
  return true;
}

bool ReadFd(const Napi::Value& value, int* out) {
  uint32_t fd;
  if (!ReadUint32(value, &fd) || fd > static_cast<uint32_t>(INT_MAX)) return false;
  *out = static_cast<int>(fd);
  return true;
}

bool ReadString(const Napi::Value& value, size_t maxBytes, std::string* out) {
  if (!value.IsString()) return false;
  std::string text = value.As<Napi::String>().Utf8Value();
  // An embedded NUL would silently truncate the name the kernel sees.
  if (text.empty() || text.size() > maxBytes || text.find('\0') != std::string::npos) return false;
  *out = std::move(text);
  return true;
}

// Node-API has no direct query under version 8; a side-effect-free call that goes through the
// "can call into JS" check answers it.
bool CanCallIntoJs(napi_env env) {
  napi_value undefined;
  bool equal = false;
  if (napi_get_undefined(env, &undefined) != napi_ok) return false;
  return napi_strict_equals(env, undefined, undefined, &equal) == napi_ok;
}

napi_value MakeEventCallback(napi_env env, napi_ref receiver, napi_ref callback, napi_async_context context, int type,
                             napi_value a, napi_value b) {
  // Plain Node-API with every status checked: this runs while a worker may be terminating, when
  // node-addon-api's error helpers would turn a refused call into a fatal error.
  napi_value self = nullptr, function = nullptr, undefined = nullptr, typeValue = nullptr, result = nullptr;
  if (napi_get_reference_value(env, receiver, &self) != napi_ok ||
      napi_get_reference_value(env, callback, &function) != napi_ok || napi_get_undefined(env, &undefined) != napi_ok ||
      napi_create_int32(env, type, &typeValue) != napi_ok || self == nullptr || function == nullptr) {
    return nullptr;
  }
  napi_value argv[3] = {typeValue, a != nullptr ? a : undefined, b != nullptr ? b : undefined};
  if (napi_make_callback(env, context, self, function, 3, argv, &result) != napi_ok) {
    ReportPendingException(env);
    return nullptr;
  }
  return result;
}

}  // namespace enclave
