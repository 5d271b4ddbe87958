"""The course as pages (``python -m prunevid course``): how it is built, and the committed ``reports/course/`` opened
in a real headless browser, every chapter link followed."""
import json
import os
import re
import shutil

import fixtures
import nbformat
import pytest

from prunevid.harness import course

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COURSE = os.path.join(ROOT, "reports", "course")

PLOT = '''import matplotlib.pyplot as plt
plt.plot([0, 1], [1, 0])
print("chapter one ran with n =", n)'''


def _notebook(path, body, params="n = 3"):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# a chapter"), p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_build_course_pages_show_code_and_pictures_and_the_index_links_them(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_one.ipynb", PLOT)
    _notebook(nbs / "01_two.ipynb", 'raise RuntimeError("chapter two breaks")')
    chapters = [("00_one.ipynb", "One", "The first chapter."), ("01_two.ipynb", "Two", "The second chapter.")]
    out = tmp_path / "course"
    out.mkdir()
    (out / "99_dropped.html").write_text("a page of a chapter that no longer exists")
    status = course.build_course(str(out), str(nbs), chapters=chapters, log=lambda *a: None)
    assert status == {"00_one.ipynb": "done", "01_two.ipynb": "failed"}
    assert sorted(p.name for p in out.iterdir()) == ["00_one.html", "01_two.html", "course.json", "index.html"]
    assert list(json.loads((out / "course.json").read_text())) == ["00_one.ipynb"]     # the chapters that ran
    page = (out / "00_one.html").read_text()
    assert "plt.plot([0, 1], [1, 0])" in re.sub(r"<[^>]+>", "", page)   # code shown, not hidden as in sweep reports
    assert "chapter one ran with n = 3" in page and "data:image/png;base64," in page     # outputs and the picture
    assert 'href="index.html"' in page and 'href="01_two.html"' in page                 # navigation bar
    index = (out / "index.html").read_text()
    assert index.index('href="00_one.html"') < index.index('href="01_two.html"')        # reading order
    assert "The first chapter." in index and "failed: " in index and "chapter two breaks" in index
    # rerun one chapter only: the other keeps its page and, from course.json, its run date and time
    status = course.build_course(str(out), str(nbs), chapters=chapters, only=["01"], log=lambda *a: None)
    assert status == {"01_two.ipynb": "failed"}
    index = (out / "index.html").read_text()
    assert re.search(r'href="00_one.html".*?executed \d{4}-\d\d-\d\d in \d+ s', index, re.S)
    (out / "course.json").unlink()                     # without the record the index can only say where it came from
    course.build_course(str(out), str(nbs), chapters=chapters, only=["01"], log=lambda *a: None)
    assert "page from an earlier run" in (out / "index.html").read_text()
    with pytest.raises(ValueError, match="no chapter matches"):
        course.build_course(str(out), str(nbs), chapters=chapters, only=["42"])


def test_chapters_are_the_tutorials_in_reading_order():
    files = [c[0] for c in course.CHAPTERS]
    assert [f[:2] for f in files] == ["00", "01", "02", "03", "04", "11", "12", "13"]
    assert all(os.path.isfile(os.path.join(ROOT, "notebooks", f)) for f in files)
    assert all(c[2].endswith(".") for c in course.CHAPTERS)                  # one sentence per chapter


def test_committed_course_has_every_chapter_small_and_complete():
    index = open(os.path.join(COURSE, "index.html")).read()
    assert 'class="failed"' not in index and "earlier run" not in index     # every chapter ran, in one run
    links = re.findall(r'<li><p class="title"><a href="([^"]+)"', index)
    assert links == [os.path.splitext(c[0])[0] + ".html" for c in course.CHAPTERS]
    total = 0
    for name in links:
        page = open(os.path.join(COURSE, name)).read()
        assert "jp-InputArea" in page and "data:image/png;base64," in page, name          # code and pictures
        assert 'class="ename"' not in page and "Traceback" not in page, name              # no error output
        total += os.path.getsize(os.path.join(COURSE, name))
    assert total < 10 * 2 ** 20, f"the committed course is {total / 2 ** 20:.1f} MB"


# Opens the index in a frame, then every chapter it links, one after another; reports what rendered.
CHECK_PAGE = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="f" style="width:1200px;height:900px"></iframe>
<script>
const frame = document.getElementById('f');
const load = src => new Promise(r => { frame.onload = () => r(frame.contentDocument); frame.src = src; });
(async () => {
  const idx = await load('index.html');
  const links = [...idx.querySelectorAll('ol a[href]')].map(a => a.getAttribute('href'));
  const out = {title: idx.title, chapters: idx.querySelectorAll('ol li').length, links, pages: []};
  for (const href of links) {
    const status = await fetch(href).then(r => r.status).catch(() => 0);
    const doc = await load(href);
    const imgs = [...doc.images];
    await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
    out.pages.push({href, status, images: imgs.length, loaded: imgs.filter(i => i.naturalWidth > 0).length,
                    code: doc.querySelectorAll('.jp-InputArea').length, back: !!doc.querySelector('nav a[href="index.html"]')});
  }
  document.getElementById('result').textContent = JSON.stringify(out);
})();
</script></body></html>"""


def test_committed_course_renders_in_a_headless_browser(tmp_path):
    fixtures.browser_or_skip()
    site = tmp_path / "site"
    shutil.copytree(COURSE, site)                     # the check page must not land in the committed folder
    result = fixtures.browser_check(str(site), CHECK_PAGE, str(tmp_path / ".chrome"), budget_ms=30000, timeout_s=180)
    assert result["title"] == "PruneVid Kit: the course" and result["chapters"] == len(course.CHAPTERS)
    assert result["links"] == [os.path.splitext(c[0])[0] + ".html" for c in course.CHAPTERS]
    for page in result["pages"]:                       # every chapter: served, rendered, its pictures decoded
        assert page["status"] == 200 and page["code"] > 0 and page["back"], page
        assert page["images"] > 0 and page["loaded"] == page["images"], page
