//! Object and resource models (OMA LwM2M Core 1.2, resource model, and Appendix D "LwM2M Object
//! Definition"): what an object's DDF file declares about it and its resources.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::value::ResourceType;

/// A `major.minor` version (ObjectVersion, LWM2MVersion).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Version {
    /// Major number.
    pub major: u8,
    /// Minor number.
    pub minor: u8,
}

impl Version {
    /// Version 1.0, the default when a DDF file or a registration omits it.
    pub const V1_0: Version = Version::new(1, 0);
    /// Version 1.1.
    pub const V1_1: Version = Version::new(1, 1);
    /// Version 1.2.
    pub const V1_2: Version = Version::new(1, 2);

    /// `major.minor`.
    pub const fn new(major: u8, minor: u8) -> Version {
        Version { major, minor }
    }
}

/// A version string that is not `major.minor`.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
#[error("{0:?} is not a major.minor version")]
pub struct VersionError(pub String);

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(text: &str) -> Result<Version, VersionError> {
        let err = || VersionError(text.chars().take(32).collect());
        let (major, minor) = text.trim().split_once('.').ok_or_else(err)?;
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u8>().ok())
                .flatten()
        };
        Ok(Version::new(
            number(major).ok_or_else(err)?,
            number(minor).ok_or_else(err)?,
        ))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What may be done with a resource (DDF `<Operations>`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Operations {
    /// No operation (an object instance may still carry it in bootstrap).
    None,
    /// Read.
    R,
    /// Write.
    W,
    /// Read and write.
    RW,
    /// Execute.
    E,
}

impl Operations {
    /// Reads a DDF `<Operations>` element (an empty element is [`Operations::None`]).
    pub fn from_ddf(text: &str) -> Option<Operations> {
        Some(match text.trim().to_ascii_uppercase().as_str() {
            "" => Operations::None,
            "R" => Operations::R,
            "W" => Operations::W,
            "RW" => Operations::RW,
            "E" => Operations::E,
            _ => return None,
        })
    }

    /// The DDF spelling.
    pub fn ddf_name(self) -> &'static str {
        match self {
            Operations::None => "",
            Operations::R => "R",
            Operations::W => "W",
            Operations::RW => "RW",
            Operations::E => "E",
        }
    }

    /// Is the resource readable?
    pub fn is_readable(self) -> bool {
        matches!(self, Operations::R | Operations::RW)
    }

    /// Is the resource writable?
    pub fn is_writable(self) -> bool {
        matches!(self, Operations::W | Operations::RW)
    }

    /// Is the resource executable?
    pub fn is_executable(self) -> bool {
        self == Operations::E
    }
}

/// A resource as its object's DDF declares it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ResourceModel {
    /// Resource id.
    pub id: u16,
    /// Name.
    pub name: String,
    /// Allowed operations.
    pub operations: Operations,
    /// Multiple-instance resource?
    pub multiple: bool,
    /// Mandatory resource?
    pub mandatory: bool,
    /// Data type.
    pub resource_type: ResourceType,
    /// Range or enumeration, as written.
    pub range_enumeration: String,
    /// Units, as written.
    pub units: String,
    /// Description.
    pub description: String,
}

/// An object as its DDF declares it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ObjectModel {
    /// Object id.
    pub id: u16,
    /// Name.
    pub name: String,
    /// Description (`Description1`).
    pub description: String,
    /// Object URN (`urn:oma:lwm2m:oma:3:1.1`).
    pub urn: String,
    /// Object version (1.0 when the DDF omits it).
    pub version: Version,
    /// LwM2M enabler version the object was written for (1.0 when omitted).
    pub lwm2m_version: Version,
    /// Can the object have several instances?
    pub multiple: bool,
    /// Must a client implement it?
    pub mandatory: bool,
    /// Resources by id.
    pub resources: BTreeMap<u16, ResourceModel>,
}

/// Where codecs find the model of an object: a registry, a client's set of objects, or
/// nothing at all ([`NoModels`]).
pub trait ModelLookup {
    /// The model of `object_id`, if known.
    fn object(&self, object_id: u16) -> Option<&ObjectModel>;

    /// The model of a resource, if its object is known and declares it.
    fn resource(&self, object_id: u16, resource_id: u16) -> Option<&ResourceModel> {
        self.object(object_id)?.resources.get(&resource_id)
    }
}

/// No models: codecs fall back to the types the format itself carries.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoModels;

impl ModelLookup for NoModels {
    fn object(&self, _object_id: u16) -> Option<&ObjectModel> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!("1.1".parse(), Ok(Version::V1_1));
        assert!("1".parse::<Version>().is_err());
        assert!("1.x".parse::<Version>().is_err());
        assert!("1.-1".parse::<Version>().is_err());
        assert!(Version::V1_0 < Version::V1_2);
        assert_eq!(Version::new(2, 10).to_string(), "2.10");
    }

    #[test]
    fn operations() {
        assert_eq!(Operations::from_ddf("rw"), Some(Operations::RW));
        assert_eq!(Operations::from_ddf("X"), None);
        assert!(Operations::RW.is_readable() && Operations::RW.is_writable());
        assert!(Operations::E.is_executable() && !Operations::E.is_readable());
    }
}
