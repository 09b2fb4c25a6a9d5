//! Conformance of the DDF parser and of the built-in core objects against the public OMA
//! LwM2M registry (every object file and its version history), when a copy of it sits
//! beside the repository at `../shared/lwm2m-registry`.

use std::path::{Path, PathBuf};

use cairn_lwm2m::ddf::{DdfError, parse_ddf_bytes};
use cairn_lwm2m::registry::ModelRegistry;

fn registry_dir() -> Option<PathBuf> {
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = repo_root.join("../shared/lwm2m-registry");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: OMA registry not found at {}; registry conformance not checked",
            dir.display()
        );
        None
    }
}

fn xml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "xml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_registry_object_parses() {
    let Some(dir) = registry_dir() else { return };
    let mut files = xml_files(&dir);
    files.extend(xml_files(&dir.join("version_history")));
    assert!(
        files.len() > 100,
        "expected the full registry, found {} files",
        files.len()
    );
    let mut failures = Vec::new();
    let mut objects = 0;
    let mut other_documents = Vec::new();
    for file in &files {
        match std::fs::read(file).map(|bytes| parse_ddf_bytes(&bytes)) {
            Ok(Ok(models)) => objects += models.len(),
            Ok(Err(DdfError::NotObjectDefinition(what))) => {
                other_documents.push(format!("{} ({what})", file.display()));
            }
            Ok(Err(err)) => failures.push(format!("{}: {err}", file.display())),
            Err(err) => failures.push(format!("{}: {err}", file.display())),
        }
    }
    eprintln!(
        "parsed {objects} objects from {} files, {} failures; not object definitions: {}",
        files.len(),
        failures.len(),
        other_documents.join(", ")
    );
    assert!(objects > 700, "only {objects} objects parsed");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn load_dir_loads_the_registry() {
    let Some(dir) = registry_dir() else { return };
    let mut registry = ModelRegistry::new();
    let loaded = registry.load_dir(&dir).expect("registry folder loads");
    let history = registry
        .load_dir(&dir.join("version_history"))
        .expect("history loads");
    assert!(loaded > 100 && history > 100, "{loaded} + {history}");
    assert!(registry.get(3, cairn_lwm2m::Version::V1_0).is_some());
}

#[test]
fn built_in_models_match_the_registry() {
    let Some(dir) = registry_dir() else { return };
    let mut published = ModelRegistry::new();
    published.load_dir(&dir).expect("registry loads");
    published
        .load_dir(&dir.join("version_history"))
        .expect("history loads");
    let built_in = ModelRegistry::with_core_models();
    assert!(built_in.len() >= 13);
    let mut mismatches = Vec::new();
    for model in built_in.iter() {
        let Some(reference) = published.get(model.id, model.version) else {
            mismatches.push(format!(
                "/{} v{}: not in the registry",
                model.id, model.version
            ));
            continue;
        };
        let head = |m: &cairn_lwm2m::ObjectModel| {
            (
                collapse(&m.name),
                m.urn.clone(),
                m.lwm2m_version,
                m.multiple,
                m.mandatory,
            )
        };
        if head(model) != head(reference) {
            mismatches.push(format!(
                "/{} v{}: object attributes differ",
                model.id, model.version
            ));
        }
        let ids: Vec<u16> = model.resources.keys().copied().collect();
        let reference_ids: Vec<u16> = reference.resources.keys().copied().collect();
        if ids != reference_ids {
            mismatches.push(format!(
                "/{} v{}: resource ids {ids:?} != {reference_ids:?}",
                model.id, model.version
            ));
        }
        for (id, resource) in &model.resources {
            let Some(expected) = reference.resources.get(id) else {
                continue;
            };
            let key = |r: &cairn_lwm2m::ResourceModel| {
                (
                    collapse(&r.name),
                    r.operations,
                    r.multiple,
                    r.mandatory,
                    r.resource_type,
                    collapse(&r.range_enumeration),
                    collapse(&r.units),
                )
            };
            if key(resource) != key(expected) {
                mismatches.push(format!(
                    "/{}/{id} v{}: {:?} != {:?}",
                    model.id,
                    model.version,
                    key(resource),
                    key(expected)
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Names in the published files sometimes carry doubled spaces; compare words.
fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
