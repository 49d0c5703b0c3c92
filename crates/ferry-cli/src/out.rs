//! Standard output for every command: a closed pipe (`ferry hosts | head -1`) ends Ferry
//! quietly, as it ends other tools (status 141, SIGPIPE's); any other failure to write (a full
//! disk: `> /dev/full`) is an error that says so. Never a panic.

use std::io::Write;

/// Write `args` (and a newline) to standard output, or end as above.
pub fn write(args: std::fmt::Arguments, newline: bool) {
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = r {
        failed(&e);
    }
}

/// Write `bytes` to standard output and flush, or end as above.
pub fn bytes(bytes: &[u8]) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(bytes).and_then(|()| o.flush()) {
        failed(&e);
    }
}

/// Standard output cannot be written: end, quietly for a closed pipe.
pub fn failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("ferry: error: cannot write to standard output: {e}");
    std::process::exit(1);
}
