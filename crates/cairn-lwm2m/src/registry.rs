//! A registry of object models keyed by (object id, object version) (OMA LwM2M Core 1.2
//! "ObjectVersion" and Appendix D), filled from the built-in core objects and from
//! DDF files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::builtin;
use crate::ddf::{DdfError, MAX_DDF_LEN, parse_ddf_bytes};
use crate::model::{ModelLookup, ObjectModel, Version};

/// Object models by (id, version).
#[derive(Clone, Debug, Default)]
pub struct ModelRegistry {
    models: BTreeMap<(u16, Version), ObjectModel>,
}

/// Why models could not be loaded from a folder.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The folder or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A file is not a valid DDF document.
    #[error("{path}: {source}")]
    Ddf {
        /// The file.
        path: PathBuf,
        /// What was wrong in it.
        source: DdfError,
    },
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> ModelRegistry {
        ModelRegistry::default()
    }

    /// A registry holding the core objects built into this crate.
    pub fn with_core_models() -> ModelRegistry {
        let mut registry = ModelRegistry::new();
        for model in builtin::core_models() {
            registry.add(model);
        }
        registry
    }

    /// Adds (or replaces) a model; returns the one it replaced.
    pub fn add(&mut self, model: ObjectModel) -> Option<ObjectModel> {
        self.models.insert((model.id, model.version), model)
    }

    /// The model of `id` at exactly `version`.
    pub fn get(&self, id: u16, version: Version) -> Option<&ObjectModel> {
        self.models.get(&(id, version))
    }

    /// The highest version known for `id`.
    pub fn latest(&self, id: u16) -> Option<&ObjectModel> {
        self.models
            .range((id, Version::new(0, 0))..=(id, Version::new(u8::MAX, u8::MAX)))
            .next_back()
            .map(|(_, model)| model)
    }

    /// Every model, by id then version.
    pub fn iter(&self) -> impl Iterator<Item = &ObjectModel> {
        self.models.values()
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Is the registry empty?
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Parses a DDF document and adds its objects; returns how many were added.
    pub fn load_ddf(&mut self, bytes: &[u8]) -> Result<usize, DdfError> {
        let models = parse_ddf_bytes(bytes)?;
        let count = models.len();
        for model in models {
            self.add(model);
        }
        Ok(count)
    }

    /// Loads every `*.xml` file of `dir` (not recursing), in name order; returns how many
    /// objects were added. Well-formed XML documents that are not object definitions
    /// (a registry index, a reusable-resource list) are skipped; the first unreadable or
    /// invalid file stops the load.
    pub fn load_dir(&mut self, dir: &Path) -> Result<usize, RegistryError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Io { path, source }
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext.eq_ignore_ascii_case("xml"))
            })
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        let mut count = 0;
        for path in files {
            let size = std::fs::metadata(&path).map_err(io(&path))?.len();
            if size > MAX_DDF_LEN as u64 {
                return Err(RegistryError::Ddf {
                    source: DdfError::TooLarge(usize::try_from(size).unwrap_or(usize::MAX)),
                    path,
                });
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            match self.load_ddf(&bytes) {
                Ok(added) => count += added,
                Err(DdfError::NotObjectDefinition(_)) => {}
                Err(source) => return Err(RegistryError::Ddf { path, source }),
            }
        }
        Ok(count)
    }

    /// A view that resolves each object to the version a client declared (`</3/0>;ver=1.1`
    /// at registration), and to the latest known version otherwise.
    pub fn for_versions(&self, versions: &BTreeMap<u16, Version>) -> VersionedModels<'_> {
        VersionedModels {
            registry: self,
            versions: versions.clone(),
        }
    }
}

/// Latest versions: the lookup codecs use when nothing else is known.
impl ModelLookup for ModelRegistry {
    fn object(&self, object_id: u16) -> Option<&ObjectModel> {
        self.latest(object_id)
    }
}

/// Models at the versions one client declared.
#[derive(Clone, Debug)]
pub struct VersionedModels<'a> {
    registry: &'a ModelRegistry,
    versions: BTreeMap<u16, Version>,
}

impl ModelLookup for VersionedModels<'_> {
    fn object(&self, object_id: u16) -> Option<&ObjectModel> {
        match self.versions.get(&object_id) {
            Some(version) => self
                .registry
                .get(object_id, *version)
                .or_else(|| self.registry.latest(object_id)),
            None => self.registry.latest(object_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: u16, version: Version) -> ObjectModel {
        ObjectModel {
            id,
            name: format!("object {id}"),
            description: String::new(),
            urn: String::new(),
            version,
            lwm2m_version: Version::V1_0,
            multiple: false,
            mandatory: false,
            resources: BTreeMap::new(),
        }
    }

    #[test]
    fn keyed_by_id_and_version() {
        let mut registry = ModelRegistry::new();
        registry.add(model(3, Version::V1_0));
        registry.add(model(3, Version::V1_2));
        registry.add(model(4, Version::V1_0));
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.latest(3).map(|m| m.version), Some(Version::V1_2));
        assert_eq!(
            registry.get(3, Version::V1_0).map(|m| m.version),
            Some(Version::V1_0)
        );
        assert!(registry.get(3, Version::V1_1).is_none());
        let declared = BTreeMap::from([(3, Version::V1_0)]);
        let view = registry.for_versions(&declared);
        assert_eq!(view.object(3).map(|m| m.version), Some(Version::V1_0));
        assert_eq!(view.object(4).map(|m| m.version), Some(Version::V1_0));
        assert!(view.object(5).is_none());
    }

    #[test]
    fn load_dir_reports_the_bad_file() {
        let dir = std::env::temp_dir().join(format!("cairn-lwm2m-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("a.xml"),
            "<LWM2M><Object><ObjectID>9000</ObjectID></Object></LWM2M>",
        )
        .expect("write");
        std::fs::write(dir.join("ignored.txt"), "not xml").expect("write");
        std::fs::write(dir.join("index.xml"), "<DDFList/>").expect("write");
        let mut registry = ModelRegistry::new();
        assert_eq!(registry.load_dir(&dir).ok(), Some(1));
        assert!(registry.latest(9000).is_some());
        std::fs::write(dir.join("b.xml"), "<LWM2M><Object/></LWM2M>").expect("write");
        let err = registry.load_dir(&dir).expect_err("b.xml has no ObjectID");
        assert!(err.to_string().contains("b.xml"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
