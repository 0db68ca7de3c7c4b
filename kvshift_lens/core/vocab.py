"""Token ids every synthetic task and the synthetic-vocabulary tokenizer share: BOS = 0 (first token of
every sequence), PAD = 1, NO_ANSWER = 2; content tokens are `[N_SPECIAL, d_vocab)`."""

BOS, PAD, NO_ANSWER = 0, 1, 2
N_SPECIAL = 3  # content tokens are [N_SPECIAL, d_vocab)
