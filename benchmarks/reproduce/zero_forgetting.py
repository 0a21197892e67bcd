r"""Zero forgetting: a domain's as-frozen loss is bit-identical after every later domain.

Paper: "zero forgetting when domains are evaluated in isolation". Here in two steps on one run
directory: ``brainstacks fit`` on the first domain alone, then the same command with the whole
curriculum (the run resumes: the finished domain is loaded from disk, the later ones train on
top). Checked: the first domain's stack files have the same sha256 before and after the later
domains; every as-frozen entry of the forgetting matrix (a domain with exactly the stacks that
were on when it finished) equals that domain's loss at freeze bit for bit, in every later row;
and the first domain's loss at freeze is the same number in both steps. The ungated losses
(every stack on) are shown beside them: that is where later domains do interfere.

    python benchmarks/reproduce/zero_forgetting.py                 # 3 demo domains, ~3 min on 2 cores
    python benchmarks/reproduce/zero_forgetting.py --config configs/tinyllama_nf4.yaml \
        --domains chat code math medical --epochs 8 --batches 200
"""

from __future__ import annotations

import hashlib

from common import (
    Bench,
    add_training_flags,
    domains_flag,
    fmt,
    parser,
    read_forgetting,
    read_manifest,
    training_overrides,
)


def file_hashes(run_dir, domain: str) -> dict[str, str]:
    """sha256 of the bytes on disk of every stack file of ``domain`` (not the manifest's record of it)."""
    return {
        r["file"]: hashlib.sha256((run_dir / r["file"]).read_bytes()).hexdigest()
        for r in read_manifest(run_dir)["stacks"]
        if r["domain"] == domain
    }


def main() -> None:
    p = parser(__doc__, domains=["chat", "code", "math"])
    add_training_flags(p, epochs=3, batches=8)
    bench = Bench("zero_forgetting", p.parse_args())
    a = bench.args
    first, later = a.domains[0], a.domains[1:]
    if not later:
        raise SystemExit("zero_forgetting needs at least two --domains")
    settings = training_overrides(a)
    run = bench.fit("run", [*domains_flag(a.config, [first]), *settings])
    before = (
        None
        if bench.dry
        else {"hashes": file_hashes(run, first), "at_freeze": read_forgetting(run)["at_freeze"][first]}
    )
    bench.fit("run", [*domains_flag(a.config, a.domains), *settings], fresh=False)
    if bench.dry:
        return
    after_hashes = file_hashes(run, first)
    matrix = read_forgetting(run)
    at_freeze = matrix["at_freeze"]
    checks = []
    for row in matrix["rows"]:
        for domain, loss in row["as_frozen"].items():
            checks.append(
                {
                    "after": row["after"],
                    "domain": domain,
                    "as_frozen": loss,
                    "at_freeze": at_freeze[domain],
                    "ungated": row["ungated"][domain],
                    "identical": loss == at_freeze[domain],
                }
            )
    result = {
        "paper": "zero forgetting when domains are evaluated in isolation (with the stacks they were trained with)",
        "setting": {"domains": a.domains, "epochs": a.epochs, "batches": a.batches, "rounds": a.rounds},
        "first_domain_stack_sha256": {"before_later_domains": before["hashes"], "after": after_hashes},
        "stack_files_identical": before["hashes"] == after_hashes,
        "first_at_freeze": {"alone": before["at_freeze"], "after_curriculum": at_freeze[first]},
        "checks": checks,
        "all_as_frozen_identical": all(c["identical"] for c in checks) and before["at_freeze"] == at_freeze[first],
    }
    rows = [
        "| after | domain | loss at freeze | as frozen now | bit-identical | ungated now (all stacks on) |",
        "|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {c['after']} | {c['domain']} | {c['at_freeze']!r} | {c['as_frozen']!r} "
        f"| {'yes' if c['identical'] else '**no**'} | {fmt(c['ungated'])} |"
        for c in checks
    ]
    files = "identical" if result["stack_files_identical"] else "**different**"
    hashes = ", ".join(f"{k}: {v[:16]}..." for k, v in after_hashes.items())
    all_identical = "yes" if result["all_as_frozen_identical"] else "no"
    body = f"""
Setting: domains {a.domains}; step 1 trains `{first}` alone, step 2 resumes the same run with the whole curriculum;
{a.rounds} round(s) of {a.epochs} epochs x {a.batches} steps. Paper: {result["paper"]}. Losses printed in full (repr).

{chr(10).join(rows)}

`{first}` stack files sha256 before vs after the later domains: {files}
({hashes}); `{first}` loss at freeze alone {before["at_freeze"]!r},
after the curriculum {at_freeze[first]!r}. Every as-frozen entry bit-identical: **{all_identical}**
({"reproduced" if result["all_as_frozen_identical"] and result["stack_files_identical"] else "NOT reproduced"}).
"""
    bench.write(result, "Zero forgetting: as-frozen losses bit-identical after later domains", body)


if __name__ == "__main__":
    main()
