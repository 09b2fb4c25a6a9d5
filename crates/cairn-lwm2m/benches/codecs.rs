//! Encode and decode benchmarks of the LwM2M content formats (OMA LwM2M Core 1.2 §7.4):
//! a full Device object instance (/3/0, every readable resource of Device 1.2) and a
//! 100-instance Temperature object (/3303). Prints the encoded size of each case.

use std::hint::black_box;

use cairn_coap::ContentFormat;
use cairn_lwm2m::{
    LwM2mNode, LwM2mObject, LwM2mObjectInstance, LwM2mPath, LwM2mResource, ModelLookup,
    ModelRegistry, ObjectLink, ResourceType, Value, decode, encode,
};
use criterion::{Criterion, criterion_group, criterion_main};

const FORMATS: [(&str, ContentFormat); 5] = [
    ("tlv", ContentFormat::LWM2M_TLV),
    ("lwm2m-json", ContentFormat::LWM2M_JSON),
    ("senml-json", ContentFormat::SENML_JSON),
    ("senml-cbor", ContentFormat::SENML_CBOR),
    ("lwm2m-cbor", ContentFormat::LWM2M_CBOR),
];

fn sample(ty: ResourceType, seed: u16) -> Value {
    match ty {
        ResourceType::String => Value::String(format!("value-{seed}")),
        ResourceType::Integer | ResourceType::None => Value::Integer(i64::from(seed) * 37),
        ResourceType::UnsignedInteger => Value::UnsignedInteger(u64::from(seed) * 1000),
        ResourceType::Float => Value::Float(f64::from(seed) + 0.25),
        ResourceType::Boolean => Value::Boolean(seed % 2 == 0),
        ResourceType::Opaque => Value::Opaque(vec![seed as u8; 8]),
        ResourceType::Time => Value::Time(1_700_000_000 + i64::from(seed)),
        ResourceType::Objlnk => Value::Objlnk(ObjectLink {
            object_id: 3,
            instance_id: seed,
        }),
        ResourceType::Corelnk => Value::Corelnk(format!("</3/{seed}>")),
    }
}

/// Every readable resource of a model, multiple-instance resources with two instances.
fn full_instance(models: &ModelRegistry, object: u16, id: u16) -> LwM2mObjectInstance {
    let model = models.object(object).expect("built-in model");
    let resources = model
        .resources
        .values()
        .filter(|r| r.operations.is_readable())
        .map(|r| {
            if r.multiple {
                LwM2mResource::multiple(
                    r.id,
                    [
                        (0, sample(r.resource_type, r.id)),
                        (1, sample(r.resource_type, r.id + 1)),
                    ],
                )
            } else {
                LwM2mResource::single(r.id, sample(r.resource_type, r.id + id))
            }
        });
    LwM2mObjectInstance::new(id, resources)
}

fn bench_case(
    c: &mut Criterion,
    name: &str,
    path: LwM2mPath,
    node: &LwM2mNode,
    models: &ModelRegistry,
) {
    for (format_name, format) in FORMATS {
        let bytes = encode(node, &path, format, models).expect("encodes");
        eprintln!("size {name} {format_name}: {} bytes", bytes.len());
        c.bench_function(&format!("encode {name} {format_name}"), |b| {
            b.iter(|| encode(black_box(node), &path, format, models))
        });
        c.bench_function(&format!("decode {name} {format_name}"), |b| {
            b.iter(|| decode(black_box(&bytes), format, &path, models))
        });
    }
}

fn codecs(c: &mut Criterion) {
    let models = ModelRegistry::with_core_models();
    let device = LwM2mNode::ObjectInstance(full_instance(&models, 3, 0));
    bench_case(
        c,
        "device /3/0",
        LwM2mPath::ObjectInstance(3, 0),
        &device,
        &models,
    );
    let temperatures = LwM2mObject::new(3303, (0..100).map(|i| full_instance(&models, 3303, i)));
    let object = LwM2mNode::Object(temperatures);
    bench_case(c, "3303 x100", LwM2mPath::Object(3303), &object, &models);
}

criterion_group!(benches, codecs);
criterion_main!(benches);
