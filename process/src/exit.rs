//! Exit codes every `ebb` command and component binary uses.

/// A bad command line, flag or input file: the process says what is wrong on stderr and does nothing else.
pub const USAGE: u8 = 2;
