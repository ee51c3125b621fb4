//! The commands' standard output: one place that knows what to do when nobody reads it.

/// `println!` for the commands' output: when stdout is closed (`lanyard-broker audit query … |
/// head`) the command ends quietly instead of panicking, and another write error (a full disk)
/// is one clear line on stderr.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*))
    };
}

pub(crate) use out;

/// Writes one line of a command's output (see `out!`). Blocking, as `println!` is.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{args}") {
        Ok(()) => {}
        // The reader went away: nothing more can be delivered, which is no error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("lanyard-broker: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}
