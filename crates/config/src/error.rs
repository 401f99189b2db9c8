//! The error type returned when a configuration file cannot be read or is refused.
//!
//! Every refusal names the file and, when the problem is in the text, the
//! 1-based line and column plus the dotted key it concerns (for example
//! `pair.failover_timeout_ms` or `node[1].channel[0]`, array indexes counted
//! from 0), so an operator can go straight to the offending line.

use std::io;
use std::path::{Path, PathBuf};

/// Why a configuration was refused.
///
/// Use the accessors ([`file`](Self::file), [`line`](Self::line),
/// [`column`](Self::column), [`key`](Self::key), [`message`](Self::message))
/// when you need the parts; `Display` gives the one-line form
/// `"{file}:{line}:{column}: {key}: {message}"`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8, ...).
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        /// The file that was being read.
        file: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// The text is not valid TOML. No key is given: the parser stopped
    /// before it could tell which key the text belonged to.
    #[error("{}:{line}:{column}: {message}", .file.display())]
    Syntax {
        /// The configuration file.
        file: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (in characters) of the problem.
        column: usize,
        /// What the TOML parser objected to.
        message: String,
    },

    /// The text is valid TOML but breaks a rule of the configuration schema:
    /// an unknown or missing key, a wrong type, or a value out of range.
    #[error("{}:{line}:{column}: {key}: {message}", .file.display())]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// 1-based line of the offending key or value (for a missing key,
        /// the header of the table that lacks it).
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// Dotted path of the key, e.g. `node[1].channel[0]`.
        key: String,
        /// What is wrong, in plain words.
        message: String,
    },

    /// [`Config::node`](crate::Config::node) was asked for a node the
    /// configuration does not define.
    #[error(
        "{}: node: no node named {name:?} in this pair (valid names: {})",
        .file.display(),
        .valid.join(", ")
    )]
    UnknownNode {
        /// The configuration file.
        file: PathBuf,
        /// The name that was asked for.
        name: String,
        /// The node names the configuration does define.
        valid: Vec<String>,
    },
}

impl ConfigError {
    /// The configuration file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            Self::Read { file, .. }
            | Self::Syntax { file, .. }
            | Self::Invalid { file, .. }
            | Self::UnknownNode { file, .. } => file,
        }
    }

    /// 1-based line of the problem, if it has a position in the text.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Syntax { line, .. } | Self::Invalid { line, .. } => Some(*line),
            Self::Read { .. } | Self::UnknownNode { .. } => None,
        }
    }

    /// 1-based column (in characters) of the problem, if it has a position.
    pub fn column(&self) -> Option<usize> {
        match self {
            Self::Syntax { column, .. } | Self::Invalid { column, .. } => Some(*column),
            Self::Read { .. } | Self::UnknownNode { .. } => None,
        }
    }

    /// Dotted path of the key concerned (`pair.name`, `node[0].channel[1]`,
    /// `resource[2].kind`, ...), if one is known.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::UnknownNode { .. } => Some("node"),
            Self::Read { .. } | Self::Syntax { .. } => None,
        }
    }

    /// What is wrong, without the file/line/key prefix.
    pub fn message(&self) -> String {
        match self {
            Self::Read { source, .. } => format!("cannot read: {source}"),
            Self::Syntax { message, .. } | Self::Invalid { message, .. } => message.clone(),
            Self::UnknownNode { name, valid, .. } => format!(
                "no node named {name:?} in this pair (valid names: {})",
                valid.join(", ")
            ),
        }
    }
}
