"""Duplicate detection on a labelled set built from real data; throughput; state size.

    cd /work/main && /tmp/venv/bin/python bench/similarity_dedup.py [--n 4000] [--scale-s 180]
    /tmp/venv/bin/python bench/similarity_dedup.py --sweep --n 2000   # threshold choice (seed 1)

Labelled set (English: Bitext utterances, Russian: encodechka utterances). Each simulated
customer has 1–5 earlier messages (different intents/labels). The candidate is either

* positive: a rewording of one earlier message — exact resend, typos, case, punctuation,
  greeting / sign-off, adjacent words swapped, or an e-mail version with a signature and
  the chat text quoted — and must be linked to THAT message;
* negative: a new request of the same customer (another intent), or the same text sent by
  a different customer (separate state: never a duplicate by construction; counted).

Bitext utterances of the same intent written from different templates are NOT used as
rewordings (they are different sentences); their rate of being flagged is printed apart.

The scale part feeds distinct messages for ``--customers`` customers over simulated days
for ``--scale-s`` seconds of wall time, with lazy expiry plus an hourly sweep (what the
worker's timer does), and prints the serialized state size, extrapolated to 1M messages.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
import tracemalloc
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.classify.dedup import (
    CustomerDedupState,
    DedupConfig,
    check_duplicate,
    expire,
    remember,
)
from pipeline.events import Channel, InboundMessage

DATA = Path("/work/shared/data")
T0 = datetime(2025, 1, 1, tzinfo=UTC)

GREET = {
    "en": ["Hello,", "Hi there!", "Good morning.", "Dear support team,", "Hey"],
    "ru": ["Здравствуйте!", "Добрый день.", "Привет,", "Доброе утро!", "Уважаемая поддержка,"],
}
SIGNOFF = {
    "en": ["Thanks", "Thank you!", "Best regards,\nJohn", "Cheers", "Kind regards,\nMaria Lopez"],
    "ru": ["Спасибо", "Заранее спасибо!", "С уважением,\nИван", "Благодарю", "Спасибо, Анна"],
}
SIGNATURE = {
    "en": "\n\n--\nJohn Smith\nSenior Buyer, Acme Trading Ltd\nTel. +1 555 0100\n"
    "Sent from my iPhone",
    "ru": "\n\n-- \nИванов Иван Иванович\nООО «Ромашка», отдел закупок\nтел. +7 916 123-45-67",
}


def load() -> dict[str, list[tuple[str, str]]]:
    """(text, label) per language."""
    en: list[tuple[str, str]] = []
    with open(
        DATA / "bitext_customer_support/bitext_20k_utterances.csv", encoding="utf-8-sig"
    ) as f:
        for r in csv.DictReader(f):
            en.append((r["utterance"], r["intent"]))
    ru: list[tuple[str, str]] = []
    with open(DATA / "encodechka_intents_ru/intents_train.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if len(r["text"].split()) >= 3:
                ru.append((r["text"], r["label"]))
    return {"en": en, "ru": ru}


def typo(rng: random.Random, text: str, n: int) -> str:
    chars = list(text)
    for _ in range(n):
        if len(chars) < 4:
            break
        i = rng.randrange(1, len(chars) - 1)
        op = rng.choice("dsir")
        if op == "d":
            del chars[i]
        elif op == "s":
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op == "i":
            chars.insert(i, chars[i])
        else:
            chars[i] = rng.choice("аеоиxyzqwerty" if rng.random() < 0.5 else "etaoin")
    return "".join(chars)


def swap_words(rng: random.Random, text: str) -> str:
    w = text.split()
    if len(w) < 3:
        return text
    i = rng.randrange(len(w) - 1)
    w[i], w[i + 1] = w[i + 1], w[i]
    return " ".join(w)


def reword(rng: random.Random, text: str, lang: str) -> tuple[str, str, Channel]:
    """A realistic resend of ``text``: (new text, perturbation name, channel)."""
    kind = rng.choice(
        ["resend", "typos", "case_punct", "greet_sign", "word_order", "email_sig", "mixed"]
    )
    ch = Channel.webchat
    if kind == "resend":
        out = text
    elif kind == "typos":
        out = typo(rng, text, rng.randint(1, 3))
    elif kind == "case_punct":
        out = text.upper() if rng.random() < 0.3 else text.lower()
        out = out.rstrip("?.!") + rng.choice(["", "??", "!!!", " ...", "."])
        out = out.replace(",", "")
    elif kind == "greet_sign":
        out = f"{rng.choice(GREET[lang])} {text}\n{rng.choice(SIGNOFF[lang])}"
    elif kind == "word_order":
        out = swap_words(rng, text)
    elif kind == "email_sig":
        ch = Channel.email
        quote = "\n".join("> " + line for line in text.splitlines())
        out = f"{rng.choice(GREET[lang])}\n\n{typo(rng, text, 1)}\n\n{rng.choice(SIGNOFF[lang])}"
        out += SIGNATURE[lang] + (
            f"\n\nOn Mon, support wrote:\n{quote}" if rng.random() < 0.5 else ""
        )
    else:
        out = f"{rng.choice(GREET[lang])} {typo(rng, swap_words(rng, text), 1).lower()}"
    return out, kind, ch


def msg(
    mid: str, cust: str, text: str, at: datetime, ch: Channel = Channel.webchat
) -> InboundMessage:
    return InboundMessage(
        message_id=mid,
        channel=ch,
        channel_message_id=mid,
        customer_id=cust,
        text=text,
        received_at=at,
    )


def build_and_eval(n: int, cfg: DedupConfig, seed: int) -> None:
    rng = random.Random(seed)
    data = load()
    tp = fp = fn = tn = 0
    wrong_link = 0
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_lang: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    same_intent = [0, 0]
    diff_customer = [0, 0]
    lookups = 0
    t_lookup = 0.0
    for i in range(n):
        lang = "en" if i % 2 == 0 else "ru"
        pool = data[lang]
        k = rng.randint(1, 5)
        history: list[tuple[str, str]] = []
        labels: set[str] = set()
        while len(history) < k:
            t, lab = rng.choice(pool)
            if lab not in labels:
                history.append((t, lab))
                labels.add(lab)
        state = CustomerDedupState()
        now = T0
        for j, (t, _) in enumerate(history):
            now += timedelta(minutes=rng.randint(1, 120))
            state = remember(state, msg(f"c{i}m{j}", f"c{i}", t, now), f"case{i}_{j}", now, cfg)
        now += timedelta(minutes=rng.randint(1, 600))
        roll = rng.random()
        if roll < 0.5:  # positive
            target = rng.randrange(k)
            text, kind, ch = reword(rng, history[target][0], lang)
            t0 = time.perf_counter()
            d = check_duplicate(state, msg(f"c{i}new", f"c{i}", text, now, ch), now, cfg)
            t_lookup += time.perf_counter() - t0
            lookups += 1
            ok = d.is_duplicate and d.duplicate_of == f"c{i}m{target}"
            if d.is_duplicate and not ok:
                wrong_link += 1
            tp += ok
            fn += not ok
            by_kind[kind][0] += ok
            by_kind[kind][1] += 1
            by_lang[lang][0 if ok else 2] += 1
        elif roll < 0.9:  # same customer, new request (another intent)
            t, lab = rng.choice(pool)
            while lab in labels:
                t, lab = rng.choice(pool)
            t0 = time.perf_counter()
            d = check_duplicate(state, msg(f"c{i}new", f"c{i}", t, now), now, cfg)
            t_lookup += time.perf_counter() - t0
            lookups += 1
            fp += d.is_duplicate
            tn += not d.is_duplicate
            by_lang[lang][1 if d.is_duplicate else 3] += 1
        else:  # different customer, same text: a fresh state
            t = history[0][0]
            d = check_duplicate(CustomerDedupState(), msg(f"x{i}", f"other{i}", t, now), now, cfg)
            fp += d.is_duplicate
            tn += not d.is_duplicate
            diff_customer[0] += d.is_duplicate
            diff_customer[1] += 1
        if lang == "en" and rng.random() < 0.3:  # same intent, another template: informational
            lab0 = history[0][1]
            others = [u for u, lab in pool if lab == lab0 and u != history[0][0]]
            d = check_duplicate(state, msg(f"c{i}si", f"c{i}", rng.choice(others), now), now, cfg)
            same_intent[0] += d.is_duplicate
            same_intent[1] += 1
    prec = tp / max(1, tp + fp)
    rec = tp / max(1, tp + fn)
    f1 = 2 * prec * rec / max(1e-9, prec + rec)
    out = sys.stdout.write
    out(
        f"labelled set: {n} cases (positives {tp + fn}, negatives {fp + tn}), "
        f"near_threshold={cfg.near_threshold}\n"
    )
    out(
        f"  precision {prec:.4f}  recall {rec:.4f}  F1 {f1:.4f}  (tp {tp} fp {fp} fn {fn} tn {tn}; "
        f"flagged but linked to the wrong message: {wrong_link})\n"
    )
    for lang, (tpl, fpl, fnl, _tnl) in sorted(by_lang.items()):
        p = tpl / max(1, tpl + fpl)
        r = tpl / max(1, tpl + fnl)
        out(f"  {lang}: precision {p:.4f} recall {r:.4f}\n")
    for kind, (ok, tot) in sorted(by_kind.items()):
        out(f"  recall[{kind}] {ok}/{tot} = {ok / max(1, tot):.3f}\n")
    out(f"  different customers, same text → flagged {diff_customer[0]}/{diff_customer[1]}\n")
    out(
        f"  (info) same customer, same Bitext intent, other template → flagged "
        f"{same_intent[0]}/{same_intent[1]}\n"
    )
    out(
        f"  lookups/s (check_duplicate, 1–5 entries, incl. fingerprint): "
        f"{lookups / t_lookup:,.0f}\n"
    )


def scale(customers: int, budget_s: float, cfg: DedupConfig, target: int = 1_000_000) -> None:
    """Feed distinct messages until the time budget, measure state, extrapolate."""
    rng = random.Random(11)
    data = load()
    texts = [t for t, _ in data["en"]] + [t for t, _ in data["ru"]]
    # 1M messages over 30 simulated days: ~33k/day, so ~1/30 of them live in a 24 h window.
    step_s = 30 * 86400 / target
    states: dict[str, CustomerDedupState] = {}
    tracemalloc.start()
    start = time.perf_counter()
    now = T0
    last_sweep = now
    i = 0
    while time.perf_counter() - start < budget_s and i < target:
        now = T0 + timedelta(seconds=i * step_s)
        cust = f"cust{rng.randrange(customers)}"
        text = f"{rng.choice(texts)} {i}"  # distinct
        st = states.get(cust, CustomerDedupState())
        m = msg(f"m{i}", cust, text, now)
        d = check_duplicate(st, m, now, cfg)
        states[cust] = remember(st, m, f"case{i}" if not d.is_duplicate else d.case_id, now, cfg)
        i += 1
        if (now - last_sweep).total_seconds() >= 3600:  # the worker's hourly timer
            for k in list(states):
                s2 = expire(states[k], now, cfg)
                if s2.entries:
                    states[k] = s2
                else:
                    del states[k]
            last_sweep = now
    elapsed = time.perf_counter() - start
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = sum(len(s.model_dump_json()) for s in states.values())
    entries = sum(len(s.entries) for s in states.values())
    out = sys.stdout.write
    out(
        f"scale: {i:,} distinct messages, {customers:,} customers, simulated "
        f"{(now - T0).total_seconds() / 86400:.1f} days, {elapsed:.0f} s wall "
        f"({i / elapsed:,.0f} msg/s check+remember, tracemalloc on)\n"
    )
    out(
        f"  live keys {len(states):,}, live entries {entries:,}, serialized state "
        f"{size / 1e6:.1f} MB ({size / max(1, entries):.0f} B/entry), python peak "
        f"{peak / 1e6:.0f} MB\n"
    )
    if i < target:
        # Steady state: the live set is bounded by the window, not by the total count.
        live_at_target = min(target, int(cfg.window_s / step_s))
        out(
            f"  extrapolated to {target:,} messages (window {cfg.window_s / 3600:.0f} h holds "
            f"≈{live_at_target:,} live entries): "
            f"≈{live_at_target * size / max(1, entries) / 1e6:.0f} MB serialized state\n"
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--threshold", type=float, default=DedupConfig().near_threshold)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--scale-s", type=float, default=180.0)
    ap.add_argument("--sweep", action="store_true", help="try thresholds on the tuning seed")
    ap.add_argument("--seed", type=int, default=8, help="8: report set; 1: tuning set")
    a = ap.parse_args()
    if a.sweep:
        for th in (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8):
            build_and_eval(a.n, DedupConfig(near_threshold=th), seed=1)
        return 0
    cfg = DedupConfig(near_threshold=a.threshold)
    build_and_eval(a.n, cfg, seed=a.seed)
    if a.scale_s > 0:
        scale(a.customers, a.scale_s, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
