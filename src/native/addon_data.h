#pragma once

#include <napi.h>

#include <cstddef>
#include <vector>

namespace enclave {

// Bytes taken from the kernel per read(2): large enough for throughput, small enough that a
// flood of readable sockets cannot make one callback allocate much.
constexpr size_t kReadChunkBytes = 64 * 1024;

// Per-environment state (one per Node thread that loads the addon), owned by Node-API instance data.
struct AddonData {
  // One scratch read buffer per thread instead of one per socket: thousands of idle sockets
  // must not each pin 64 KiB. Each read is copied out into a Buffer of the exact size.
  std::vector<char> readScratch = std::vector<char>(kReadChunkBytes);
  // An accepted fd offered to JS and not yet wrapped in a Handle. Ownership moves exactly when the
  // Handle constructor runs, so the fd is closed exactly once even if the JS callback is cut short
  // (an exception, a terminating worker) before or after wrapping it.
  int unclaimedAcceptFd = -1;
  // TlsCredentials' constructor, to tell its objects from others before unwrapping them.
  Napi::FunctionReference tlsCredentials;
};

}  // namespace enclave
