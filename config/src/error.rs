//! Problems found in user configuration, worded so a user can act on them.

use std::fmt;

/// One invalid key: which key, the value given, and what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The key as the user wrote it (an alias stays an alias).
    pub key: String,
    /// The value given.
    pub value: String,
    /// What is wrong, as a sentence fragment: `must be between 6s and 1h`.
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}: {}", self.key, self.value, self.problem)
    }
}

/// Something legal but probably not what the user meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The key it concerns.
    pub key: String,
    /// What to know about it.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A configuration that could not be used: **every** invalid key of the object, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// Every problem found, in key order.
    pub errors: Vec<FieldError>,
    /// Warnings found on the way (reported beside the errors).
    pub warnings: Vec<Warning>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// A usable value and the warnings found while reading it.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosed<T> {
    /// The resolved value.
    pub value: T,
    /// Things worth telling the user; none of them stopped the value from being used.
    pub warnings: Vec<Warning>,
}
