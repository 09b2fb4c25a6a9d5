//! Fuzz target: recognition of LwM2M operations in CoAP request parts (Transport Binding
//! 1.2) for the three interfaces. The input is split into Uri-Path, Uri-Query and
//! payload at 0xFF bytes; the first byte picks method and options.
#![no_main]

use cairn_coap::ContentFormat;
use cairn_lwm2m::{
    BootstrapServerRequest, ClientRequest, CoapRequest, Method, ModelRegistry, ServerRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else { return };
    let mut parts = rest.splitn(3, |b| *b == 0xff);
    let text =
        |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
    let path = text(parts.next());
    let queries = text(parts.next());
    let payload = parts.next().unwrap_or_default().to_vec();
    let methods = [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Fetch,
        Method::IPatch,
    ];
    let formats = [0u16, 40, 42, 60, 110, 112, 11542, 11543, 11544];
    let coap = CoapRequest {
        method: methods[usize::from(selector & 0x07) % methods.len()],
        path: path.split('/').map(str::to_owned).collect(),
        queries: queries
            .split('&')
            .filter(|q| !q.is_empty())
            .map(str::to_owned)
            .collect(),
        content_format: (selector & 0x08 != 0)
            .then(|| ContentFormat(formats[usize::from(selector >> 4) % formats.len()])),
        accept: (selector & 0x80 != 0).then_some(ContentFormat::LINK_FORMAT),
        observe: (selector & 0x40 != 0).then_some(u32::from(selector & 0x01)),
        payload,
    };
    let models = ModelRegistry::with_core_models();
    let _ = ServerRequest::from_coap(&coap, &models);
    let _ = BootstrapServerRequest::from_coap(&coap, &models);
    let _ = ClientRequest::from_coap(&coap, &models);
});
