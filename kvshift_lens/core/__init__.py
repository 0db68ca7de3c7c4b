"""The shared base every layer may import: one-line config errors, registries, the config schema, the
special token ids and lazy namespaces. It imports nothing else from kvshift_lens."""
