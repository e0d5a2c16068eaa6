{
  "targets": [
    {
      "target_name": "enclave_native",
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc!": ["-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
      "conditions": [
        ["OS=='linux'", {
          "sources": [
            "src/native/addon.cc",
            "src/native/errno_value.cc",
            "src/native/socket_address.cc",
            "src/native/socket_handle.cc",
            "src/native/nsm_device.cc",
            "src/native/original_dst.cc",
            "src/native/net_interface.cc",
            "src/native/hostname.cc",
            "src/native/child_reaper.cc",
            "src/native/process_hardening.cc",
            "src/native/heap_memory.cc",
            "src/native/tls_relay.cc"
          ]
        }, {
          "sources": ["src/native/unsupported.cc"]
        }]
      ]
    },
    {
      "target_name": "app_sandbox",
      "type": "executable",
      "conditions": [
        ["OS=='linux'", {
          "sources": ["src/native/app_sandbox.c"],
          "cflags": ["-Wall", "-Wextra", "-Werror", "-O2"]
        }, {
          "sources": ["src/native/app_sandbox_unsupported.c"]
        }]
      ]
    }
  ]
}
