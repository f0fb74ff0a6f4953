"""HyenaDNA and Caduceus: the models compute what they claim, the genome split does not leak, and the two
stages chain through train.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dyt import convert
from tasks.caduceus import CaduceusTask
from tasks.data import genome
from tasks.data.genome import COMPLEMENT, PAD, reverse_complement
from tasks.dna.caduceus import Caduceus, selective_scan
from tasks.dna.hyena import HyenaDNA, fft_conv
from tasks.hyenadna import HyenaDNATask
from tests.helpers import ROOT, metrics, run_train, summary

WINDOW, BLOCK, VAL_FRACTION = 200, 20000, 0.2


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread only adds synchronisation, which costs most on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _covered(starts: np.ndarray, length: int, size: int) -> np.ndarray:
    """Positions inside any window [s, s + length)."""
    marks = np.zeros(size + 1, dtype=np.int64)
    np.add.at(marks, starts, 1)
    np.add.at(marks, starts + length, -1)
    return np.cumsum(marks)[:size] > 0


@pytest.fixture(scope="module")
def benchmark():
    return genome.coding_vs_intergenic(WINDOW, BLOCK, VAL_FRACTION, train_size=64, val_per_class=100)


def test_embedded_genome_is_the_real_chromosome():
    name, sequence = genome.embedded_sequence()
    assert name == "NZ_LN831026.1" and len(sequence) == 2_463_666
    assert set(sequence) == set("ACGT")
    assert 0.50 < (sequence.count("G") + sequence.count("C")) / len(sequence) < 0.56  # C. diphtheriae: 53.5 % GC


def test_coding_vs_intergenic_split_shares_no_genome_position(benchmark):
    train, val, info = benchmark
    size = len(genome.embedded_sequence()[1])
    train_positions = np.zeros(size, dtype=bool)
    for starts in info["train_starts"]:  # every window a training item can draw
        train_positions |= _covered(starts, WINDOW, size)
    val_positions = np.zeros(size, dtype=bool)
    for starts in info["val_starts"]:
        val_positions |= _covered(starts, WINDOW, size)
    assert val_positions.sum() > 20 * WINDOW and train_positions.sum() > 10 * val_positions.sum()
    assert not (train_positions & val_positions).any()
    # and the items the datasets hand out are those windows, with the right labels
    mask = genome.embedded_coding_mask()
    tokens = genome.embedded_genome().contigs["NZ_LN831026.1"]
    for label, starts in enumerate(info["val_starts"]):
        for start in starts[:20]:
            assert mask[start:start + WINDOW].all() if label else not mask[start:start + WINDOW].any()
    assert [val[i]["labels"].item() for i in (0, len(val) - 1)] == [0, 1]
    first = val[0]["tokens"].numpy()
    assert (first == tokens[info["val_starts"][0][0]:][:WINDOW]).all()
    labels = [train[i]["labels"].item() for i in range(8)]
    assert labels == [0, 1] * 4  # balanced


def test_pretraining_windows_stay_in_their_blocks():
    lengths = {"a": 100_000, "b": 45_000}
    regions = genome.split_regions(lengths, 10_000, 0.2)
    assert len(regions["val"]) == 3 and len(regions["train"]) == 12  # every 5th of 15 blocks
    # a genome whose "tokens" are global positions (contig b from 1,000,000), so a window tells where it was cut
    offset = {"a": 0, "b": 1_000_000}
    source = genome.Genome({name: np.arange(n) + offset[name] for name, n in lengths.items()})
    val_blocks = {(offset[c] + s) // 10_000 for c, s, _ in regions["val"]}
    windows = genome.RandomWindows(source, regions["train"], 512, 300, rc_prob=0.0)
    for i in range(len(windows)):
        pos = windows[i]["tokens"]
        assert torch.equal(pos, torch.arange(512) + pos[0])  # contiguous, within one contig
        assert pos[0] // 10_000 == pos[-1] // 10_000 and int(pos[0]) // 10_000 not in val_blocks
        assert torch.equal(windows[i]["tokens"], pos)  # a pure function of the index
    val = genome.TiledWindows(source, regions["val"], 512)
    assert len(val) == 19 + 19 + 9  # the last val block is b's final 5 kbp
    for i in range(len(val)):
        pos = val[i]["tokens"]
        assert pos[0] // 10_000 == pos[-1] // 10_000 and int(pos[0]) // 10_000 in val_blocks


def test_masked_lm_masks_fifteen_percent_and_predicts_only_there():
    windows = genome.TiledWindows(genome.embedded_genome(), [("NZ_LN831026.1", 0, 200_000)], 1000)
    masked = genome.MaskedLM(windows, 0.15, seed=3)
    item = masked[7]
    original = windows[7]["tokens"]
    chosen = item["targets"] != -100
    assert 0.11 < chosen.float().mean() < 0.19
    assert torch.equal(item["targets"][chosen], original[chosen])
    assert torch.equal(item["tokens"][~chosen], original[~chosen])
    assert 0.7 < (item["tokens"][chosen] == genome.MASK).float().mean() < 0.9
    assert torch.equal(masked[7]["tokens"], item["tokens"])


def test_reverse_complement():
    tokens = torch.from_numpy(genome.encode("AACGTNx").astype(np.int64))
    assert "".join("ACGTN"[t] for t in reverse_complement(tokens)) == "NNACGTT"  # x is not a nucleotide: N
    assert torch.equal(reverse_complement(reverse_complement(tokens)), tokens)


@pytest.mark.parametrize("norm", ["rmsnorm", "dyt"])
def test_caduceus_ps_is_reverse_complement_equivariant(norm):
    torch.manual_seed(0)
    tokens = torch.randint(0, 4, (3, 40))
    tokens[:, 5] = genome.MASK
    for num_classes in (None, 3):
        model = Caduceus(16, 2, num_classes=num_classes, rc="ps", d_state=4)
        convert(model, norm)
        with torch.no_grad():  # move DyT's γ, β and α away from their symmetric initial values
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        out, out_rc = model(tokens), model(reverse_complement(tokens))
        if num_classes is None:  # masked-LM logits: reversed, and every nucleotide's logit is its complement's
            torch.testing.assert_close(out_rc, out.flip(1)[..., COMPLEMENT[:4]], rtol=1e-5, atol=1e-5)
            assert out.shape == (3, 40, 4)
        else:
            torch.testing.assert_close(out_rc, out, rtol=1e-5, atol=1e-5)
            assert out.std() > 0
    plain = Caduceus(16, 2, num_classes=3, rc="none", d_state=4)
    assert not torch.allclose(plain(tokens), plain(reverse_complement(tokens)), atol=1e-4)
    conjoined = Caduceus(16, 2, num_classes=3, rc="ph", d_state=4).eval()
    torch.testing.assert_close(conjoined(reverse_complement(tokens)), conjoined(tokens), rtol=1e-5, atol=1e-5)


def test_selective_scan_matches_the_recurrence_written_out():
    torch.manual_seed(0)
    b, length, d, n = 2, 6, 3, 4
    u, dt = torch.randn(b, length, d, dtype=torch.float64), torch.rand(b, length, d, dtype=torch.float64)
    A = -torch.rand(d, n, dtype=torch.float64) * 3
    B, C = torch.randn(b, length, n, dtype=torch.float64), torch.randn(b, length, n, dtype=torch.float64)
    expected = torch.zeros(b, length, d, dtype=torch.float64)
    for t in range(length):  # y_t = Σ_s C_t · (Π_{s<r≤t} exp(Δ_r A)) Δ_s B_s u_s
        for s in range(t + 1):
            decay = torch.exp(dt[:, s + 1:t + 1, :, None] * A).prod(1)  # [b, d, n]
            expected[:, t] += (C[:, t, None] * decay * (dt[:, s] * u[:, s])[..., None] * B[:, s, None]).sum(-1)
    torch.testing.assert_close(selective_scan(u, dt, A, B, C), expected)


def test_hyena_long_convolution_is_causal_convolution():
    torch.manual_seed(0)
    u, k, skip = (torch.randn(shape, dtype=torch.float64) for shape in ((2, 3, 50), (3, 50), (3,)))
    direct = F.conv1d(F.pad(u, (49, 0)), k.flip(-1)[:, None], groups=3)  # y_t = Σ_{s≤t} k_{t-s} u_s
    torch.testing.assert_close(fft_conv(u, k, skip), direct + u * skip[:, None])


def test_hyenadna_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    model = HyenaDNA(16, 2, 64, filter_order=8)
    tokens = torch.randint(0, 4, (2, 40))
    changed = tokens.clone()
    changed[:, 25:] = (changed[:, 25:] + 1) % 4
    logits, logits_changed = model(tokens), model(changed)
    torch.testing.assert_close(logits[:, :25], logits_changed[:, :25])
    assert not torch.allclose(logits[:, 25:], logits_changed[:, 25:])
    classifier = HyenaDNA(16, 2, 64, num_classes=2, filter_order=8)
    batch = genome.pad_collate([{"tokens": tokens[0], "labels": torch.tensor(1)},
                                {"tokens": tokens[1, :30], "labels": torch.tensor(0)}])
    assert batch["tokens"].shape == (2, 40) and (batch["tokens"][1, 30:] == PAD).all()
    torch.testing.assert_close(classifier(batch["tokens"])[1], classifier(tokens[1:, :30])[0])


def test_genomic_benchmarks_folder_layout(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for name, letter in (("positive", "G"), ("negative", "A")):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.txt").write_text(letter * (10 + i) + "\n")
    train, test = genome.genomic_benchmark(tmp_path, rc_prob=0.0, max_len=11)
    assert train.classes == ["negative", "positive"] and len(train) == 6 and len(test) == 4
    assert [train[i]["labels"].item() for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert train[2]["tokens"].tolist() == [0] * 11  # cropped to max_len
    assert set(train[4]["tokens"].tolist()) == {2}


@pytest.mark.parametrize("task,native", [("hyenadna", "layernorm"), ("caduceus", "rmsnorm")])
def test_pretrain_then_finetune_through_train_py(tmp_path, task, native):
    common = [f"task={task}", "task.size=debug", f"norm={native}", "trainer.log_every=2", "trainer.eval_every=4",
              "trainer.max_steps=4", "trainer.batch_size=4"]
    pre = tmp_path / "pretrain"
    run_train(pre, *common, "task.data.seq_len=64", "task.data.val_windows=8", OMP_NUM_THREADS="1")
    pre_summary = summary(pre)
    assert pre_summary["status"] == "completed" and pre_summary["headline"]["name"] == "val/loss"
    assert 1.0 < pre_summary["final"]["val/loss"] < 1.6  # near ln 4 (four nucleotides) at the start
    ft = tmp_path / "finetune"
    result = run_train(ft, *common, "task.stage=finetune", f"init_from={pre}", "task.data.val_per_class=8",
                       OMP_NUM_THREADS="1")
    assert "keep their initialisation (classifier.bias, classifier.weight)" in result.stdout + result.stderr
    ft_summary = summary(ft)
    assert ft_summary["status"] == "completed" and ft_summary["headline"]["name"] == "val/acc"
    assert 0.0 <= ft_summary["final"]["val/acc"] <= 1.0 and ft_summary["final"]["val/loss"] > 0
    assert any("train/loss" in m for m in metrics(ft))


def test_local_fasta_through_pyfaidx(tmp_path):
    path = tmp_path / "tiny.fa"
    path.write_text(">chrA description\nACGTACGTAC\nGGGG\n>chrB\nttgcaNNacgt\n")
    source = genome.fasta_genome(path, contigs=["chrB"])
    assert source.lengths == {"chrB": 11}
    assert source.fetch("chrB", 2, 9).tolist() == genome.encode("GCANNAC").tolist()  # soft-masked → upper case
    with pytest.raises(KeyError, match="chrC"):
        genome.fasta_genome(path, contigs=["chrC"])


@pytest.mark.parametrize("name", ["hyenadna", "caduceus"])
def test_dyt_gets_a_unit_scale_embedding_and_native_norms_do_not(name):
    cfg = OmegaConf.load(ROOT / "configs" / "task" / f"{name}.yaml").task
    cfg.size, cfg.data.seq_len = "debug", 128
    task = {"hyenadna": HyenaDNATask, "caduceus": CaduceusTask}[name](cfg)
    tokens = torch.randint(0, 4, (2, 30))
    for norm, scaled in (("dyt", True), ("layernorm" if name == "hyenadna" else "rmsnorm", False)):
        model = task.build_model()
        convert(model, norm)
        task.adapt_to_norm(model, OmegaConf.create({"type": norm}))
        assert (model.embed_scale is not None) == scaled
        if scaled:
            embedded = model.embed(tokens) * model.embed_scale
            assert 0.8 < embedded.pow(2).mean().sqrt() < 1.25 and model.embed_scale.requires_grad
