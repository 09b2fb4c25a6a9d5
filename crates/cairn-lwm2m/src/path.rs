//! LwM2M paths (OMA LwM2M Core 1.2, resource model and object and resource
//! identifiers): the root `/`, an object `/o`, an object instance `/o/i`, a resource
//! `/o/i/r` and a resource instance `/o/i/r/ri`.
//!
//! Identifiers are 16-bit; 65535 is reserved by the specification (it is the "no instance"
//! value of object links), so a path never carries it.

use core::cmp::Ordering;
use core::fmt;
use core::str::FromStr;

use thiserror::Error;

/// The largest identifier a path may carry (65535 is reserved).
pub const MAX_ID: u16 = 65534;

/// A path into the LwM2M data model.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum LwM2mPath {
    /// `/`: every object of the client (Bootstrap-Discover, Bootstrap-Delete, composite roots).
    Root,
    /// `/o`
    Object(u16),
    /// `/o/i`
    ObjectInstance(u16, u16),
    /// `/o/i/r`
    Resource(u16, u16, u16),
    /// `/o/i/r/ri`
    ResourceInstance(u16, u16, u16, u16),
}

/// Why a path could not be parsed or built.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum PathError {
    /// The path has more than four identifiers.
    #[error("path has {0} segments, at most 4 are allowed")]
    TooDeep(usize),
    /// A segment is not a decimal number in 0..=65534.
    #[error("segment {index} ({segment:?}) is not an identifier in 0..=65534")]
    BadSegment {
        /// Position of the segment, from 0.
        index: usize,
        /// The offending text.
        segment: String,
    },
    /// The path does not start with '/'.
    #[error("path {0:?} does not start with '/'")]
    NotAbsolute(String),
}

impl LwM2mPath {
    /// Builds a path from up to four identifiers.
    pub fn from_ids(ids: &[u16]) -> Result<Self, PathError> {
        if let Some((index, id)) = ids.iter().enumerate().find(|(_, id)| **id > MAX_ID) {
            return Err(PathError::BadSegment {
                index,
                segment: id.to_string(),
            });
        }
        Ok(match *ids {
            [] => LwM2mPath::Root,
            [o] => LwM2mPath::Object(o),
            [o, i] => LwM2mPath::ObjectInstance(o, i),
            [o, i, r] => LwM2mPath::Resource(o, i, r),
            [o, i, r, ri] => LwM2mPath::ResourceInstance(o, i, r, ri),
            _ => return Err(PathError::TooDeep(ids.len())),
        })
    }

    /// Builds a path from CoAP Uri-Path segments (`["3", "0", "1"]`); an empty list, or a
    /// single empty segment, is the root.
    pub fn from_segments<S: AsRef<str>>(segments: &[S]) -> Result<Self, PathError> {
        Self::parse_segments(segments.iter().map(AsRef::as_ref), true)
    }

    /// The identifiers of the path, from the object down (empty for the root).
    pub fn ids(&self) -> Vec<u16> {
        let (ids, len) = self.id_array();
        ids[..len].to_vec()
    }

    fn id_array(&self) -> ([u16; 4], usize) {
        match *self {
            LwM2mPath::Root => ([0; 4], 0),
            LwM2mPath::Object(o) => ([o, 0, 0, 0], 1),
            LwM2mPath::ObjectInstance(o, i) => ([o, i, 0, 0], 2),
            LwM2mPath::Resource(o, i, r) => ([o, i, r, 0], 3),
            LwM2mPath::ResourceInstance(o, i, r, ri) => ([o, i, r, ri], 4),
        }
    }

    /// Number of identifiers (0 for the root, 4 for a resource instance).
    pub fn depth(&self) -> usize {
        self.id_array().1
    }

    /// The object identifier, unless this is the root.
    pub fn object_id(&self) -> Option<u16> {
        self.id_at(0)
    }

    /// The object instance identifier, if the path goes that deep.
    pub fn instance_id(&self) -> Option<u16> {
        self.id_at(1)
    }

    /// The resource identifier, if the path goes that deep.
    pub fn resource_id(&self) -> Option<u16> {
        self.id_at(2)
    }

    /// The resource instance identifier, if the path goes that deep.
    pub fn resource_instance_id(&self) -> Option<u16> {
        self.id_at(3)
    }

    fn id_at(&self, index: usize) -> Option<u16> {
        let (ids, len) = self.id_array();
        (index < len).then(|| ids[index])
    }

    /// Is this the root path `/`?
    pub fn is_root(&self) -> bool {
        matches!(self, LwM2mPath::Root)
    }

    /// The path one level up (the root is its own parent).
    pub fn parent(&self) -> LwM2mPath {
        match *self {
            LwM2mPath::Root | LwM2mPath::Object(_) => LwM2mPath::Root,
            LwM2mPath::ObjectInstance(o, _) => LwM2mPath::Object(o),
            LwM2mPath::Resource(o, i, _) => LwM2mPath::ObjectInstance(o, i),
            LwM2mPath::ResourceInstance(o, i, r, _) => LwM2mPath::Resource(o, i, r),
        }
    }

    /// The path one level down, or `None` below a resource instance or for id 65535.
    pub fn child(&self, id: u16) -> Option<LwM2mPath> {
        let (mut ids, len) = self.id_array();
        if len == 4 {
            return None;
        }
        ids[len] = id;
        Self::from_ids(&ids[..=len]).ok()
    }

    /// Is `self` equal to `other` or below it?
    pub fn starts_with(&self, other: &LwM2mPath) -> bool {
        let (mine, my_len) = self.id_array();
        let (theirs, their_len) = other.id_array();
        their_len <= my_len && mine[..their_len] == theirs[..their_len]
    }
}

fn parse_id(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|id| *id <= MAX_ID)
}

/// Paths order depth-first: `/3 < /3/0 < /3/0/1 < /3/1 < /4`, the order the content formats
/// list records in.
impl Ord for LwM2mPath {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, a_len) = self.id_array();
        let (b, b_len) = other.id_array();
        a[..a_len].cmp(&b[..b_len])
    }
}

impl PartialOrd for LwM2mPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for LwM2mPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ids, len) = self.id_array();
        if len == 0 {
            return f.write_str("/");
        }
        for id in &ids[..len] {
            write!(f, "/{id}")?;
        }
        Ok(())
    }
}

impl FromStr for LwM2mPath {
    type Err = PathError;

    /// Parses `/`, `/3`, `/3/0`, `/3/0/1` or `/3/0/1/2` (a trailing '/' is tolerated).
    fn from_str(text: &str) -> Result<Self, PathError> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| PathError::NotAbsolute(text.to_owned()))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Ok(LwM2mPath::Root);
        }
        Self::parse_segments(rest.split('/'), false)
    }
}

impl LwM2mPath {
    /// Parses identifiers from segments without allocating; with `skip_empty`, empty
    /// segments (from doubled or trailing '/') are ignored, otherwise they are an error.
    pub(crate) fn parse_segments<'a>(
        segments: impl Iterator<Item = &'a str>,
        skip_empty: bool,
    ) -> Result<LwM2mPath, PathError> {
        let mut ids = [0u16; 4];
        let mut len = 0;
        for (index, segment) in segments.enumerate() {
            if segment.is_empty() && skip_empty {
                continue;
            }
            if len == 4 {
                return Err(PathError::TooDeep(len + 1));
            }
            ids[len] = parse_id(segment).ok_or_else(|| PathError::BadSegment {
                index,
                segment: segment.chars().take(16).collect(),
            })?;
            len += 1;
        }
        Self::from_ids(&ids[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_depth() {
        let cases = [
            ("/", LwM2mPath::Root),
            ("/3", LwM2mPath::Object(3)),
            ("/3/0", LwM2mPath::ObjectInstance(3, 0)),
            ("/3/0/1", LwM2mPath::Resource(3, 0, 1)),
            ("/3/0/7/1", LwM2mPath::ResourceInstance(3, 0, 7, 1)),
            ("/65534/0/", LwM2mPath::ObjectInstance(65534, 0)),
        ];
        for (text, path) in cases {
            assert_eq!(text.parse::<LwM2mPath>(), Ok(path), "{text}");
        }
    }

    #[test]
    fn rejects_bad_paths() {
        for text in [
            "",
            "3/0",
            "/3//0",
            "/a",
            "/65535",
            "/1/2/3/4/5",
            "/+1",
            "/-1",
            "/3/0x1",
        ] {
            assert!(text.parse::<LwM2mPath>().is_err(), "{text}");
        }
        assert_eq!(
            "/3/x".parse::<LwM2mPath>(),
            Err(PathError::BadSegment {
                index: 1,
                segment: "x".into()
            })
        );
    }

    #[test]
    fn accessors_and_relations() {
        let path = LwM2mPath::ResourceInstance(3, 0, 7, 1);
        assert_eq!(path.object_id(), Some(3));
        assert_eq!(path.instance_id(), Some(0));
        assert_eq!(path.resource_id(), Some(7));
        assert_eq!(path.resource_instance_id(), Some(1));
        assert_eq!(path.depth(), 4);
        assert_eq!(path.parent(), LwM2mPath::Resource(3, 0, 7));
        assert!(path.starts_with(&LwM2mPath::ObjectInstance(3, 0)));
        assert!(path.starts_with(&LwM2mPath::Root));
        assert!(!path.starts_with(&LwM2mPath::ObjectInstance(3, 1)));
        assert_eq!(LwM2mPath::Root.resource_id(), None);
        assert_eq!(path.child(1), None);
        assert_eq!(LwM2mPath::Object(3).child(65535), None);
        assert_eq!(
            LwM2mPath::from_segments(&["", ""]).map(|p| p.is_root()),
            Ok(true)
        );
    }

    #[test]
    fn orders_depth_first() {
        let mut paths: Vec<LwM2mPath> = ["/4", "/3/1", "/3/0/1", "/3", "/3/0", "/"]
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        paths.sort();
        let texts: Vec<String> = paths.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["/", "/3", "/3/0", "/3/0/1", "/3/1", "/4"]);
    }

    proptest! {
        #[test]
        fn display_round_trips(ids in proptest::collection::vec(0u16..=MAX_ID, 0..=4)) {
            let path = LwM2mPath::from_ids(&ids).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(path.to_string().parse::<LwM2mPath>(), Ok(path));
            prop_assert_eq!(path.ids(), ids);
        }

        #[test]
        fn parse_never_panics(text in ".{0,40}") {
            let _ = text.parse::<LwM2mPath>();
        }
    }
}
