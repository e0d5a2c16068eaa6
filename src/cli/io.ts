/** The streams a command talks to; tests pass their own to run commands in-process. */
export interface CommandIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
}

export const processIo = (): CommandIo => ({ stdout: process.stdout, stderr: process.stderr, stdin: process.stdin });
