/*
 * app-sandbox COMMAND [ARGS...]: the customer's command behind a seccomp filter.
 *
 * Node cannot run code between fork and exec, so the runtime execs this instead (after Node has
 * dropped to `[app] user`), and this installs the filter with no_new_privs, then execs COMMAND
 * (searched in PATH). The filter keeps the app off the parent's vsock relays, which iptables
 * cannot see:
 *   - socket() and socketpair() with AF_VSOCK fail with EACCES;
 *   - io_uring_setup/enter/register fail with EACCES (IORING_OP_SOCKET would create a socket
 *     without the socket() syscall);
 *   - only the native ABI of x86_64 or aarch64 is allowed: an x32 syscall (nr >= 0x40000000) or
 *     any other arch (i386 `socketcall` via int 0x80, 32-bit ARM) fails with EACCES, since a
 *     socketcall() multiplexer would hide the family from the filter.
 * The filter is inherited by every descendant and cannot be removed. Any failure to install it
 * stops here (exit 126): the command never runs unfiltered.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define AF_VSOCK_FAMILY 40
#define X32_SYSCALL_BIT 0x40000000u
/* The same numbers on x86_64 and aarch64 (the unified table from 403 on). */
#define NR_IO_URING_SETUP 425
#define NR_IO_URING_ENTER 426
#define NR_IO_URING_REGISTER 427
#define X86_64_NR_SOCKET 41
#define X86_64_NR_SOCKETPAIR 53
#define AARCH64_NR_SOCKET 198
#define AARCH64_NR_SOCKETPAIR 199

#define DENY (SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA))
#define LOAD(field) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, field))
/* The low 32 bits of args[0]: the kernel reads socket()'s family as an int. Both arches are little-endian. */
#define LOAD_ARG0_LOW BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]))
#define RETURN(value) BPF_STMT(BPF_RET | BPF_K, (value))

/* Jump offsets count from the next instruction (BPF jumps only forward); the targets are in the comments. */
static struct sock_filter filter[] = {
    /* 0 */ LOAD(arch),
    /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),   /* -> 3 : 2 */
    /* 2 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_AARCH64, 6, 14), /* -> 9 : 17 deny */
                                                                            /* x86_64 */
    /* 3 */ LOAD(nr),
    /* 4 */ BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 12, 0),     /* -> 17 deny : 5 */
    /* 5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, X86_64_NR_SOCKET, 8, 0),     /* -> 14 family : 6 */
    /* 6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, X86_64_NR_SOCKETPAIR, 7, 0), /* -> 14 family : 7 */
    /* 7 */ BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, NR_IO_URING_SETUP, 0, 8),    /* -> 8 : 16 allow */
    /* 8 */ BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, NR_IO_URING_REGISTER, 7, 8), /* -> 16 allow : 17 deny */
                                                                             /* aarch64 */
    /* 9 */ LOAD(nr),
    /* 10 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AARCH64_NR_SOCKET, 3, 0),     /* -> 14 family : 11 */
    /* 11 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AARCH64_NR_SOCKETPAIR, 2, 0), /* -> 14 family : 12 */
    /* 12 */ BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, NR_IO_URING_SETUP, 0, 3),     /* -> 13 : 16 allow */
    /* 13 */ BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, NR_IO_URING_REGISTER, 2, 3),  /* -> 16 allow : 17 deny */
                                                                               /* socket / socketpair: the family */
    /* 14 */ LOAD_ARG0_LOW,
    /* 15 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_VSOCK_FAMILY, 1, 0), /* -> 17 deny : 16 allow */
    /* 16 */ RETURN(SECCOMP_RET_ALLOW),
    /* 17 */ RETURN(DENY),
};

int main(int argc, char** argv) {
  if (argc < 2) {
    fputs("usage: app-sandbox COMMAND [ARGS...]\n", stderr);
    return 2;
  }
  struct sock_fprog program = {.len = (unsigned short)(sizeof(filter) / sizeof(filter[0])), .filter = filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    fprintf(stderr, "app-sandbox: prctl(PR_SET_NO_NEW_PRIVS): %s; not starting %s unfiltered\n", strerror(errno),
            argv[1]);
    return 126;
  }
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0) != 0) {
    fprintf(stderr, "app-sandbox: installing the seccomp filter failed: %s; not starting %s unfiltered\n",
            strerror(errno), argv[1]);
    return 126;
  }
  execvp(argv[1], argv + 1);
  int error = errno;
  fprintf(stderr, "app-sandbox: cannot run %s: %s\n", argv[1], strerror(error));
  return error == ENOENT ? 127 : 126;
}
