"""Write the shipped RAG document set (CC0): 40 records of the glass workshops of the Kessany
Valley, an invented place, so no base model has seen the answers. Run once; the outputs are
committed: ``python -m oficina.data.rag.make_corpus``.

Mixed formats (Markdown, HTML with menus/scripts/footers that the reader must drop, PDF made with
fpdf2), tables of prices, the same registry boilerplate on every page, and ``questions.jsonl``:
each question with its answer, the source file and the sentence that supports it (the evidence
citation precision checks), plus questions the documents cannot answer (``"answer": null``).
Seeded, so a re-run writes the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
DOCS = HERE / "docs"

NAMES = ["Ardel", "Brisko", "Cavenholt", "Dunmere", "Elsquith", "Farrow", "Gellaby", "Hestmoor",
         "Ilvane", "Jorrick", "Kestrel Row", "Lumsdale", "Mardon", "Nettlecombe", "Orvane",
         "Pellory", "Quenby", "Rastholm", "Saffery", "Tollgate", "Ulverin", "Vashti", "Wendle",
         "Yarrowby", "Zennor", "Ashcombe", "Bellweather", "Corran", "Drisdale", "Emberly",
         "Fallowmere", "Grisholt", "Harnwick", "Isembard", "Jessamy", "Korran", "Lathe End",
         "Morrow", "Nolley", "Ospring"]
FIRST = ["Mira", "Tobin", "Edda", "Casimir", "Ysolde", "Brannoc", "Ilse", "Oswin", "Petra",
         "Anselm", "Wilhelmina", "Dorran", "Senna", "Halvard", "Linnet", "Rufus", "Agathe",
         "Corwin", "Tamsin", "Evrard"]
LAST = ["Tovan", "Quarrel", "Hesk", "Mallory", "Strand", "Penhallow", "Yeld", "Corbet",
        "Ashdown", "Vell", "Greaves", "Lisk", "Oakhurst", "Dunstan", "Ferrant", "Pym"]
TOWNS = ["Old Kessany", "Marrowgate", "Tilsby Ford", "Highcastle Reach", "Wyre Bend",
         "Saltcote", "Fenwick Down", "Ravensmere"]
COLOURS = ["amber", "cobalt blue", "smoke grey", "sea green", "rose", "violet", "honey yellow",
           "pale teal", "deep red", "milk white"]
PRODUCTS = ["storm lantern", "chapel lamp", "signal globe", "reading lamp", "harbour light",
            "hand lantern", "lamp chimney", "ceiling bowl"]
KILNS = ["wood-fired beehive kiln", "peat-fired tunnel kiln", "charcoal kiln",
         "coal-fired bottle kiln"]
MARKS = ["a heron", "three stars", "an open hand", "a crescent moon", "a key", "a wheatsheaf",
         "a fox", "an anchor", "a candle", "a bell"]

HEADER = ("Kessany Valley Glass Registry. Compiled by the Registry Office of the Lantern-Glass "
          "Guild. This record is part of the public registry and may be copied freely.")
FOOTER = ("Registry Office, Guild Hall, Old Kessany. Records are revised every spring; "
          "corrections go to the Registry clerk. Released to the public domain (CC0).")


def facts(rng: random.Random, name: str, i: int) -> dict:
    products = rng.sample(PRODUCTS, 3)
    return {
        "name": name,
        "founder": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
        "master": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
        "year": 1680 + (i * 7919) % 230,
        "town": TOWNS[i % len(TOWNS)],
        "colour": COLOURS[(i * 3) % len(COLOURS)],
        "kiln": KILNS[i % len(KILNS)],
        "mark": MARKS[(i * 7) % len(MARKS)],
        "workers": 4 + (i * 13) % 37,
        "output": 300 + (i * 211) % 4700,
        "products": [(p, 8 + (i * 17 + k * 29) % 90) for k, p in enumerate(products)],
    }


def body(f: dict) -> list[tuple[str, list[str]]]:
    """(section title, paragraphs) of one workshop's record."""
    n = f["name"]
    return [
        (f"The {n} workshop", [
            (f"The {n} workshop was founded in {f['year']} by {f['founder']} in {f['town']}, on "
            f"the banks of the river Kess."),
            (f"The {n} workshop is best known for its {f['colour']} lantern glass, which it has "
            f"made since its first winter."),
        ]),
        ("Workshop and kiln", [
            (f"Today the {n} workshop employs {f['workers']} glassworkers under master "
            f"{f['master']}. Its glass is melted in a {f['kiln']}."),
            (f"Every piece from the {n} workshop carries its guild mark, {f['mark']}, pressed "
            f"into the base while the glass is soft."),
            f"In a normal year the {n} workshop makes about {f['output']} pieces.",
        ]),
    ]


def price_rows(f: dict) -> list[tuple[str, str]]:
    return [(p.capitalize(), f"{c} crowns") for p, c in f["products"]]


def write_md(path: Path, f: dict) -> None:
    out = [f"_{HEADER}_", ""]
    for k, (title, paras) in enumerate(body(f)):
        out += [("# " if k == 0 else "## ") + title, ""]
        for p in paras:
            out += [p, ""]
    out += ["## Price list", "", f"Prices at the {f['name']} workshop door:", "",
            "| Item | Price |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in price_rows(f)]
    out += ["", "---", f"_{FOOTER}_", ""]
    path.write_text("\n".join(out))


def write_html(path: Path, f: dict) -> None:
    sections = []
    for k, (title, paras) in enumerate(body(f)):
        h = "h1" if k == 0 else "h2"
        sections.append(f"<{h}>{title}</{h}>\n" + "\n".join(f"<p>{p}</p>" for p in paras))
    rows = "\n".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in price_rows(f))
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>The {f['name']} workshop</title>
<style>body {{ font-family: serif; }} nav a {{ margin: 0 1em; }}</style>
<script>window.registryAnalytics = {{ page: "{f['name']}" }};</script></head>
<body>
<header><p>{HEADER}</p></header>
<nav><a href="index.html">Registry home</a> <a href="towns.html">Towns</a>
<a href="marks.html">Guild marks</a> <a href="search.html">Search the registry</a></nav>
<main>
{chr(10).join(sections)}
<h2>Price list</h2>
<p>Prices at the {f['name']} workshop door:</p>
<table><tr><th>Item</th><th>Price</th></tr>
{rows}
</table>
</main>
<aside><p>See also: the annual Kessany glass fair, held each autumn in Old Kessany.</p></aside>
<footer><p>{FOOTER}</p></footer>
<script>document.querySelectorAll("nav a").forEach(a => a.title = a.textContent);</script>
</body></html>
""")


def write_pdf(path: Path, f: dict) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(__import__("datetime").datetime(2026, 1, 1))  # same bytes on re-run
    pdf.set_title(f"The {f['name']} workshop")
    pdf.set_auto_page_break(True, 10)
    sections = body(f)
    for k, (title, paras) in enumerate(sections):
        pdf.add_page()  # one section a page, so page numbers mean something
        pdf.set_font("Helvetica", "I", 8)
        pdf.multi_cell(0, 4, HEADER, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
        pdf.set_font("Helvetica", "B", 16 if k == 0 else 13)
        pdf.multi_cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 11)
        for p in paras:
            pdf.multi_cell(0, 6, p, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        if k == len(sections) - 1:
            pdf.set_font("Helvetica", "B", 13)
            pdf.multi_cell(0, 8, "Price list", new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 6, f"Prices at the {f['name']} workshop door:", new_x="LMARGIN", new_y="NEXT")
            with pdf.table(col_widths=(60, 40)) as table:
                for row in [("Item", "Price")] + price_rows(f):
                    r = table.row()
                    for cell in row:
                        r.cell(cell)
        pdf.set_y(-18)
        pdf.set_font("Helvetica", "I", 8)
        pdf.multi_cell(0, 4, FOOTER, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


WRITERS = {"md": write_md, "html": write_html, "pdf": write_pdf}


def questions(rng: random.Random, f: dict, file: str) -> list[dict]:
    n = f["name"]
    p, price = f["products"][0]
    asks = [
        (f"Who founded the {n} workshop?", f["founder"], f"by {f['founder']}"),
        (f"In what year was the {n} workshop founded?", str(f["year"]), f"founded in {f['year']}"),
        (f"What colour of lantern glass is the {n} workshop known for?", f["colour"],
         f"its {f['colour']} lantern glass"),
        (f"What is the guild mark of the {n} workshop?", f["mark"], f"guild mark, {f['mark']}"),
        (f"What kind of kiln does the {n} workshop use?", f["kiln"], f["kiln"]),
        (f"How much does a {p} cost at the {n} workshop?", f"{price} crowns", f"{price} crowns"),
        (f"Who is the master of the {n} workshop today?", f["master"], f"master {f['master']}"),
    ]
    picked = rng.sample(asks, 2)
    return [{"question": q, "answer": a, "sources": [file], "evidence": e} for q, a, e in picked]


UNANSWERABLE = [
    "What is the telephone number of the Ardel workshop?",
    "Which football team won the Kessany Valley cup in 1998?",
    "What is the capital of Australia?",
    "How many moons does Jupiter have?",
    "Who wrote the novel Moby-Dick?",
    "What is the boiling point of water at sea level in Fahrenheit?",
    "What is the email address of the Registry clerk?",
    "How tall is the Guild Hall tower in Old Kessany?",
    "What was the price of a storm lantern at the Farrow workshop in 1850?",
    "Which programming language was Linux written in?",
]


def main() -> None:
    rng = random.Random(15)
    DOCS.mkdir(exist_ok=True)
    kinds = ["md"] * 18 + ["html"] * 12 + ["pdf"] * 10
    rng.shuffle(kinds)
    qs = []
    for i, (name, kind) in enumerate(zip(NAMES, kinds)):
        f = facts(rng, name, i)
        file = f"{name.lower().replace(' ', '-')}.{kind}"
        WRITERS[kind](DOCS / file, f)
        qs += questions(rng, f, file)
    qs += [{"question": q, "answer": None, "sources": []} for q in UNANSWERABLE]
    with open(HERE / "questions.jsonl", "w") as out:
        out.writelines(json.dumps(q) + "\n" for q in qs)


if __name__ == "__main__":
    main()
