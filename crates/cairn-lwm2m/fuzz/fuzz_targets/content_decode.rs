//! Fuzz target: every LwM2M content-format decoder (OMA LwM2M Core 1.2 §7.4) on arbitrary
//! bytes, at every path depth, with and without models; anything decoded is re-encoded.
//! The first byte picks the format, the second the path.
#![no_main]

use cairn_lwm2m::content::{self, SUPPORTED_FORMATS};
use cairn_lwm2m::{LwM2mPath, ModelRegistry, NoModels};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [format, path, payload @ ..] = data else {
        return;
    };
    let format = SUPPORTED_FORMATS[usize::from(*format) % SUPPORTED_FORMATS.len()];
    let paths = [
        LwM2mPath::Object(3),
        LwM2mPath::ObjectInstance(3, 0),
        LwM2mPath::Resource(3, 0, 7),
        LwM2mPath::ResourceInstance(3, 0, 7, 0),
        LwM2mPath::ObjectInstance(42000, 0),
    ];
    let path = paths[usize::from(*path) % paths.len()];
    let models = ModelRegistry::with_core_models();
    if let Ok(node) = content::decode(payload, format, &path, &models) {
        let _ = content::encode(&node, &path, format, &models);
    }
    let _ = content::decode(payload, format, &path, &NoModels);
    let _ = content::decode_records(payload, format, &models);
    let _ = content::decode_paths(payload, format);
    let _ = content::link::decode_discover(payload);
});
