"""ModelConfig: the architecture's hyperparameters, named as in the paper."""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    src_vocab_size: int  # source vocabulary size
    tgt_vocab_size: int  # target vocabulary size (equal to src_vocab_size when shared)
    pad_id: int  # padding id: masked as a key, ignored by the loss
    d_model: int = 512  # width of the residual stream (paper: d_model)
    n_heads: int = 8  # attention heads (paper: h); must divide d_model
    d_ff: int = 2048  # inner width of the feed-forward block (paper: d_ff)
    n_layers: int = 6  # encoder layers, and decoder layers unless n_dec_layers (paper: N)
    # Decoder layers when not n_layers (not the paper's, which has N for both): a deep encoder
    # with a shallow decoder decodes faster at a similar quality (Kasai et al. 2021).
    n_dec_layers: int | None = None
    dropout: float = 0.1  # on embeddings and sub-layer outputs (paper: P_drop)
    attn_dropout: float = 0.0  # on attention weights (not in the paper; fairseq has it)
    # on the feed-forward's hidden activations (not in the paper; fairseq's activation_dropout)
    act_dropout: float = 0.0
    # whole source tokens' embeddings (not in the paper; Nematus's dropout_source, Sennrich & Zhang
    # 2019's word dropout for low-resource NMT)
    word_dropout: float = 0.0
    max_len: int = 1024  # longest sequence the positional table covers
    pre_norm: bool = False  # False: post-LN as in the paper; True: pre-LN (more stable when deep)
    # one table for source, target and output (paper §3.4); False: a separate source table, the
    # output layer still tied to the target embedding
    share_embeddings: bool = True

    def __post_init__(self):
        sizes = ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "n_layers",
                 "max_len")  # fmt: skip
        if small := [f"{k} {getattr(self, k)}" for k in sizes if getattr(self, k) < 1]:
            raise ValueError(f"sizes must be >= 1: {', '.join(small)}")
        if self.n_dec_layers is not None and self.n_dec_layers < 1:
            raise ValueError(f"n_dec_layers must be >= 1 or None: {self.n_dec_layers}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("share_embeddings needs one vocabulary for source and target")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_layers if self.n_dec_layers is None else self.n_dec_layers

    def to_dict(self) -> dict:
        return asdict(self)
