//! Loading and validating a policy directory. STUB.

use std::fmt;
use std::path::Path;

use super::{Location, PolicySet, Role};

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where (line 0 when the problem is the whole file or directory).
    pub location: Location,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Loads every `*.yaml`/`*.yml` file in `dir`. `validate_role` checks each role against its
/// backend.
pub fn load_dir(
    _dir: &Path,
    _validate_role: &dyn Fn(&Role) -> Result<(), String>,
) -> Result<PolicySet, PolicyErrors> {
    Ok(PolicySet::default())
}
