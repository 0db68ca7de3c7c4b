"""Data: the next-token tasks (`tasks/`, one file each: induction, MQAR, hop-k, n-gram, ...), the real-text
corpora that ship with the install (`corpora`), their tokenizers (`text_tokenizers`) and Olsson et al.'s
ICL score from per-token losses (`icl`, which tasks and the trainer report). Imports only `kvshift_lens.core`."""
