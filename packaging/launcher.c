// bin/enclave-runtime of the self-contained bundle. A customer image may have no libc and no
// shell, so the entry point cannot be a script: this static binary finds the bundle it sits in
// and execs the bundle's own ELF loader on the bundle's own Node:
//   <bundle>/lib/LOADER --library-path <bundle>/lib <bundle>/bin/node <bundle>/lib/enclave-runtime.mjs ARGS...
// --library-path is not an environment variable, so the customer's command, which the runtime
// starts, still links against the image's own libraries.
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef LOADER
#error "build with -DLOADER='\"ld-linux-x86-64.so.2\"' (the basename of Node's ELF interpreter)"
#endif

static void fail(const char *what, const char *detail) {
  dprintf(2, "enclave-runtime launcher: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  _exit(127);
}

// The bundle root: /proc/self/exe when /proc is mounted, else argv[0] (an ENTRYPOINT gives an
// absolute path), each with the last two components (bin/enclave-runtime) removed.
static void bundle_root(const char *argv0, char *root) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
  } else if (argv0 == NULL || strchr(argv0, '/') == NULL || realpath(argv0, exe) == NULL) {
    fail("cannot find the bundle: /proc is not mounted and argv[0] is not a path", argv0);
  }
  for (int up = 0; up < 2; up++) {
    char *slash = strrchr(exe, '/');
    if (slash == NULL) fail("unexpected executable path", exe);
    *slash = '\0';
  }
  if (exe[0] == '\0') strcpy(exe, "/");
  strcpy(root, exe);
}

int main(int argc, char **argv) {
  static char root[PATH_MAX], loader[PATH_MAX], libdir[PATH_MAX], node[PATH_MAX], script[PATH_MAX];
  bundle_root(argc > 0 ? argv[0] : NULL, root);
  const char *base = strcmp(root, "/") == 0 ? "" : root;
  if (snprintf(loader, sizeof loader, "%s/lib/%s", base, LOADER) >= (int)sizeof loader ||
      snprintf(libdir, sizeof libdir, "%s/lib", base) >= (int)sizeof libdir ||
      snprintf(node, sizeof node, "%s/bin/node", base) >= (int)sizeof node ||
      snprintf(script, sizeof script, "%s/lib/enclave-runtime.mjs", base) >= (int)sizeof script) {
    fail("bundle path too long", root);
  }
  const int fixed = 6;
  char **args = calloc((size_t)argc + fixed + 1, sizeof *args);
  if (args == NULL) fail("out of memory", NULL);
  args[0] = loader;
  args[1] = "--library-path";
  args[2] = libdir;
  args[3] = node;
  // A larger first old space spares the relay's 64 KiB read buffers dozens of full GCs per GiB
  // (measured by `npm run bench`); Node refuses this flag in NODE_OPTIONS, so it goes here.
  args[4] = "--initial-old-space-size=64";
  args[5] = script;
  for (int i = 1; i < argc; i++) args[fixed + i - 1] = argv[i];
  execv(loader, args);
  fail(strerror(errno), loader);
  return 127;
}
