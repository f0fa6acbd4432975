//! `http_task`: a test task for health checks and the HTTP lifecycle. A job runs it as its
//! command; it serves HTTP/1.1 on `127.0.0.1:$BOREALIS_PORT_<NAME>` and writes what happens to
//! it to `events.log` in its working directory (the sandbox), one line per event, each
//! starting with a CLOCK_MONOTONIC timestamp in milliseconds:
//!
//! ```text
//! 1234000 LISTENING 31005
//! 1234998 GET /health 503
//! 1235999 GET /health 200
//! 1236500 POST /quitquitquit 200
//! 1237501 POST /abortabortabort 200
//! 1238502 SIGTERM
//! ```
//!
//! Usage: `http_task --port NAME [--healthy-after-secs N] [--exit-on PATH]...`
//!
//! - `--port NAME`: the named port to serve on (`BOREALIS_PORT_<NAME>`, the name upper-cased,
//!   anything but letters and digits turned into `_`, as the agent sets it).
//! - `GET /health` answers 503 while a file `unhealthy` exists in the working directory, else
//!   200 once a file `healthy` exists or `--healthy-after-secs` (default 0) have passed since
//!   the start, else 503. Create and remove the files to flip it.
//! - Any other request answers 200 (a POST to a lifecycle endpoint, say).
//! - `--exit-on PATH` (repeatable): after answering a POST to PATH, log `EXIT PATH` and exit
//!   with status 0 (a task that stops when asked to).
//! - On SIGTERM: log `SIGTERM`, then die of it (the agent sees "killed by signal 15").
//!
//! One connection is served at a time, each bounded by a read timeout; std and libc only.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: http_task --port NAME [--healthy-after-secs N] [--exit-on PATH]...";
/// Longest a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head line read.
const LINE_BYTES_MAX: u64 = 8 * 1024;
const HEADER_LINES_MAX: usize = 100;

struct Options {
    port_name: String,
    healthy_after: Duration,
    exit_on: Vec<String>,
}

fn parse_options(args: impl Iterator<Item = OsString>) -> Result<Options, String> {
    let mut args = args.map(|a| a.to_string_lossy().into_owned());
    let mut port_name = None;
    let mut healthy_after = Duration::ZERO;
    let mut exit_on = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--port" => port_name = Some(value()?),
            "--healthy-after-secs" => {
                let text = value()?;
                let secs: f64 = text
                    .parse()
                    .map_err(|_| format!("--healthy-after-secs {text:?}: not a number"))?;
                healthy_after = Duration::try_from_secs_f64(secs)
                    .map_err(|e| format!("--healthy-after-secs {text:?}: {e}"))?;
            }
            "--exit-on" => exit_on.push(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Options {
        port_name: port_name.ok_or("--port NAME is required")?,
        healthy_after,
        exit_on,
    })
}

/// `BOREALIS_PORT_<NAME>`, as the agent names it.
fn port_variable(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("BOREALIS_PORT_{name}")
}

/// CLOCK_MONOTONIC in milliseconds.
fn monotonic_ms() -> u64 {
    // SAFETY: clock_gettime fills the timespec it is given.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

/// Appends `<monotonic ms> <event>` to `events.log`, as one write.
fn log_event(event: &str) {
    let line = format!("{} {event}\n", monotonic_ms());
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open("events.log")
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("http_task: cannot write events.log: {e}");
    }
}

/// Blocks SIGTERM in this thread (and the threads it starts), then waits for it on a thread
/// of its own, which logs it and dies of it.
fn handle_sigterm() {
    // SAFETY: plain signal-mask calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::spawn(|| {
        // SAFETY: as above; sigwait only reads the set and writes the signal number.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let mut signal = 0;
            libc::sigwait(&set, &mut signal);
            log_event("SIGTERM");
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(libc::SIGTERM);
        }
        std::process::exit(143);
    });
}

fn health_status(started: Instant, options: &Options) -> u16 {
    if Path::new("unhealthy").exists() {
        503
    } else if Path::new("healthy").exists() || started.elapsed() >= options.healthy_after {
        200
    } else {
        503
    }
}

/// Reads one request head; returns `(method, path)`.
fn read_request(stream: &TcpStream) -> Option<(String, String)> {
    stream.set_read_timeout(Some(READ_TIMEOUT)).ok()?;
    let mut reader = BufReader::new(std::io::Read::take(stream, LINE_BYTES_MAX * 4));
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    // Skip the headers (no request this helper serves has a body it reads).
    for _ in 0..HEADER_LINES_MAX {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    Some((method, path))
}

fn serve(mut stream: TcpStream, started: Instant, options: &Options) {
    let Some((method, path)) = read_request(&stream) else {
        return;
    };
    let status = if method == "GET" && path == "/health" {
        health_status(started, options)
    } else {
        200
    };
    log_event(&format!("{method} {path} {status}"));
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let _ = stream.write_all(
        format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    );
    let _ = stream.flush();
    drop(stream);
    if method == "POST" && options.exit_on.contains(&path) {
        log_event(&format!("EXIT {path}"));
        std::process::exit(0);
    }
}

fn main() {
    let options = match parse_options(std::env::args_os().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("http_task: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    handle_sigterm();
    let variable = port_variable(&options.port_name);
    let port: u16 = match std::env::var(&variable).ok().and_then(|p| p.parse().ok()) {
        Some(port) => port,
        None => {
            eprintln!("http_task: ${variable} is not a port number");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("http_task: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    log_event(&format!("LISTENING {port}"));
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => serve(stream, started, &options),
            Err(e) => eprintln!("http_task: accept: {e}"),
        }
    }
}
