//! LwM2M data model and content formats: paths, nodes, object models and the
//! encodings of the OMA LwM2M Technical Specification (Core, §7).
#![forbid(unsafe_code)]
