r"""One-shot baseline tickets of pre-trained weights: OMP (global magnitude), random, or
2:4 (the 2 largest |w| of every 4 consecutive input channels: `omp_2by4`).

  python trainers/prune.py --pretrained=weights/robust_resnet50 --method=omp \
      --like=runs/imp/tickets/round_10 --output=tickets/omp_round_10
  python trainers/prune.py --pretrained=weights/robust_resnet50 --method=random \
      --sparsity=0.8926 --seed=0 --output=tickets/random_89

  python trainers/prune.py --pretrained=weights/robust_resnet50 --method=omp_2by4 \
      --output=tickets/omp_2by4

--like takes an IMP ticket and prunes exactly as many weights (equal sparsity, the same
layers: every conv); --sparsity a fraction; omp_2by4 takes neither (its pattern fixes
its sparsity: half of every conv whose input channels are a multiple of 4). The output is a ticket directory (masks.npz
+ ticket.json, never overwritten) that trainers/transfer.py --ticket takes.
"""
from absl import app, flags

from dwlt_tf import checks, cli, errors, imp, pruning, tickets, transfer

FLAGS = flags.FLAGS
cli.define_weights_flags()
flags.DEFINE_enum("method", "omp", list(imp.BASELINES), "Pruning baseline.")
flags.DEFINE_string("like", None, "IMP ticket whose number of pruned weights to match.")
flags.DEFINE_float("sparsity", None, "Fraction of conv weights to prune, in [0, 1).")
flags.DEFINE_integer("seed", 0, "Seed of the random baseline.")
flags.DEFINE_string("output", None, "New ticket directory.")
flags.mark_flag_as_required("output")


def main(argv):
    del argv
    with cli.reported("prune"):
        structured = pruning.METHODS[FLAGS.method].nm is not None
        if structured and (FLAGS.like is not None or FLAGS.sparsity is not None):
            raise errors.ConfigError(f"--method={FLAGS.method} prunes to its "
                                     f"{pruning.METHODS[FLAGS.method].pattern} pattern: give "
                                     "neither --like nor --sparsity")
        if not structured and (FLAGS.like is None) == (FLAGS.sparsity is None):
            raise errors.ConfigError("give exactly one of --like=<ticket> and --sparsity")
        if FLAGS.sparsity is not None and not 0.0 <= FLAGS.sparsity < 1.0:
            raise errors.ConfigError(f"--sparsity={FLAGS.sparsity}: must be in [0, 1)")
        checks.seed("--seed", FLAGS.seed)
        output = cli.new_output("output", FLAGS.output)
        # The weights must load and a --like ticket must fit them (its zero count on
        # another architecture would give a baseline at a meaningless sparsity).
        source, masks, _ = transfer.load_inputs(FLAGS.pretrained, FLAGS.like)
        pruned = sum(int(m.size - m.sum()) for m in masks.values()) if masks else None
        meta = source.meta
        path = imp.baseline_ticket(lambda: source.model,
                                   FLAGS.method, output, pruned=pruned,
                                   sparsity=FLAGS.sparsity, seed=FLAGS.seed,
                                   meta={"source_sha256": meta["source_sha256"],
                                         "arch": meta["arch"], "like": FLAGS.like})
    print(f"{path}: {FLAGS.method}, sparsity {100 * tickets.load(path)[1]['sparsity']:.2f}%")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
