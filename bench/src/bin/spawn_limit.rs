//! The machine's spawn limit: how many processes per second it can start and reap, the
//! ceiling for any agent that runs one process per task.
//!
//! `T` threads (default: the available cores) each `posix_spawn` `/bin/true` (no shell, no
//! `PATH` search, an empty environment) and `waitpid` it, until `N` spawns in all (default
//! 10,000) are done; prints the spawns per second.
//!
//! ```sh
//! cargo run --release -p borealis-bench --bin spawn_limit -- [--threads T] [--count N] [--program PATH]
//! ```
//!
//! Output: one line `spawn_limit: N processes in S s with T threads: R processes/s` (a script
//! reads the last field before `processes/s`).

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

struct Args {
    threads: usize,
    count: u64,
    program: String,
}

fn usage() -> ! {
    eprintln!("usage: spawn_limit [--threads T] [--count N] [--program PATH]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        count: 10_000,
        program: "/bin/true".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--threads" => args.threads = value().parse().unwrap_or_else(|_| usage()),
            "--count" => args.count = value().parse().unwrap_or_else(|_| usage()),
            "--program" => args.program = value(),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if args.threads == 0 || args.count == 0 {
        usage();
    }
    args
}

/// Spawns `program` with posix_spawn and waits for it; `Err` names what failed.
fn spawn_and_wait(program: &CString) -> Result<(), String> {
    let argv = [program.as_ptr() as *mut libc::c_char, std::ptr::null_mut()];
    let envp = [std::ptr::null_mut::<libc::c_char>()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: `program` is a NUL-terminated path, argv and envp are NULL-terminated arrays of
    // NUL-terminated strings that outlive the call; null file actions and attributes are the
    // documented defaults.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "posix_spawn {program:?}: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing its status into `status`.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("waitpid {pid}: {e}"));
        }
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!("{program:?} ended with wait status {status:#x}"));
    }
    Ok(())
}

fn main() {
    let args = parse_args();
    let program = CString::new(args.program.clone()).unwrap_or_else(|_| usage());
    // Each thread claims spawns from one counter until N are claimed.
    let claimed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let claimed = Arc::clone(&claimed);
            let program = program.clone();
            let count = args.count;
            std::thread::spawn(move || -> Result<u64, String> {
                let mut done = 0;
                while claimed.fetch_add(1, Ordering::Relaxed) < count {
                    spawn_and_wait(&program)?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        match worker.join().expect("a spawning thread panicked") {
            Ok(done) => total += done,
            Err(e) => {
                eprintln!("spawn_limit: {e}");
                std::process::exit(1);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "spawn_limit: {total} processes in {secs:.3} s with {} threads: {:.0} processes/s",
        args.threads,
        total as f64 / secs
    );
}
