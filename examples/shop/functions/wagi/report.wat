;; The shop's daily report, as a WAGI function: a WASI preview 1 command
;; module that answers CGI-style on stdout. Gantry runs it every night at
;; 02:00 Paris time (`[schedules.nightly-report]`) and on GET /report.
;;
;; It is written in WebAssembly text so the example needs no wasm toolchain;
;; Gantry compiles `.wat` files as it does `.wasm` ones. A C, Zig or Go
;; program built for wasm32-wasi works the same way.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock_time_get (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)

  ;; 0..16: an iovec and the written-bytes counter; 16..24: the clock.
  (data (i32.const 100) "Content-Type: text/plain\n\nshop daily report\ngenerated at unix time ")
  ;; 200..230: the digits, written right to left.
  (data (i32.const 300) "report generated\n")

  ;; Writes `len` bytes at `ptr` to file descriptor `fd`.
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func (export "_start")
    (local $seconds i64)
    (local $at i32)
    ;; Realtime clock, nanoseconds, into 16..24.
    (drop (call $clock_time_get (i32.const 0) (i64.const 1000000) (i32.const 16)))
    (local.set $seconds (i64.div_u (i64.load (i32.const 16)) (i64.const 1000000000)))
    ;; Decimal digits, from position 230 backwards, then a newline at 230.
    (i32.store8 (i32.const 230) (i32.const 10))
    (local.set $at (i32.const 230))
    (loop $digits
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $seconds) (i64.const 10)))))
      (local.set $seconds (i64.div_u (local.get $seconds) (i64.const 10)))
      (br_if $digits (i64.ne (local.get $seconds) (i64.const 0))))
    (call $write (i32.const 1) (i32.const 100) (i32.const 67))
    (call $write (i32.const 1) (local.get $at) (i32.sub (i32.const 231) (local.get $at)))
    ;; stderr goes to Gantry's log, tagged with the function and request.
    (call $write (i32.const 2) (i32.const 300) (i32.const 17))))
