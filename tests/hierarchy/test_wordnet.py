import pytest

from granularity.errors import GranularityError, HierarchyError
from granularity.hierarchy import wordnet as W
from granularity.hierarchy import wordnet_db as DB


def test_lexnames_standard():
    lines = DB.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2" and lines[44] == "44\tadj.ppl\t3"


def test_missing_wordnet_error(tmp_path):
    with pytest.raises(GranularityError, match="apt-get install wordnet-base wordnet-sense-index"):
        DB.ensure_wordnet(tmp_path / "cache", source=tmp_path / "empty")


def test_known_ancestors(wn):
    s = W.synset_of("n01440764", wn)
    assert s.name() == "tench.n.01"
    path = W.ancestors("n01440764", wn=wn)
    assert path[0] == "entity.n.01" and "fish.n.01" in path and path[-1] == "tench.n.01"
    assert W.wnid_of(wn.synset("fish.n.01")) == "n02512053"
    # goldfish and great white shark are fish; tabby cat is a mammal and not a fish
    assert "fish.n.01" in W.ancestors("n01443537", wn=wn)
    assert "fish.n.01" in W.ancestors("n01484850", wn=wn)
    cat = W.ancestors("n02123045", wn=wn)
    assert "mammal.n.01" in cat and "fish.n.01" not in cat  # default policy "longest"
    assert "domestic_animal.n.01" in W.ancestors("n02123045", policy="shortest", wn=wn)
    with pytest.raises(GranularityError, match="policy"):
        W.ancestors("n02123045", policy="first", wn=wn)
    with pytest.raises(HierarchyError, match="Invalid wnid"):
        W.synset_of("x123", wn)
    with pytest.raises(HierarchyError, match="not a WordNet 3.0 synset"):
        W.synset_of("n00000001", wn)


def test_imagenet1k_tree(wn):
    wnids = W.resource_wnids("imagenet1k")
    assert len(wnids) == 1000 == len(set(wnids)) and wnids[0] == "n01440764"
    h = W.imagenet1k_hierarchy(wn=wn)
    assert h.leaves[0] == "n01440764" and h.root == "entity.n.01"
    assert "fish.n.01" in h.ancestors("n01440764")
    assert h.level_sizes()[:5] == [1, 2, 5, 8, 14] and h.num_classes(h.depth) == 1000
    # several tench-like fish share the fish node; lca of tench and goldfish is a fish node
    assert h.node_depth(h.lca("n01440764", "n01443537")) >= h.node_depth("fish.n.01")
    assert W.imagenet1k_hierarchy(wn=wn).content_hash == h.content_hash  # deterministic
    c = h.cut_from_leaves(max_classes=40)
    assert 20 <= c.num_classes(1) <= 40


def test_cifar100_wordnet_and_class_lists(wn, tmp_path):
    h = W.cifar100_wordnet_hierarchy(wn=wn)
    assert h.num_leaves == 100 and h.titles[h.leaves[0]] == "apple"
    skunk = h.leaves[W.resource_names("cifar100").index("skunk")]
    assert "mammal.n.01" in h.ancestors(skunk)
    # a class list where one class is the ancestor of another (as in ImageNet-21k)
    p = tmp_path / "classes.txt"
    p.write_text("n02512053\nn01440764\n")  # fish, tench
    g = W.imagenet21k_hierarchy(p, wn=wn)
    assert g.leaves == ["n02512053", "n01440764"]
    assert g.parent("n02512053") == "fish.n.01" and "fish.n.01" in g.ancestors("n01440764")
    p.write_text("n01440764\nn01440764\n")
    with pytest.raises(HierarchyError, match="Duplicate name"):
        W.imagenet21k_hierarchy(p, wn=wn)
    with pytest.raises(GranularityError, match="does not exist"):
        W.imagenet21k_hierarchy(tmp_path / "none.txt", wn=wn)


@pytest.mark.parametrize("bad", ["n1440764", "n001440764", "N01440764", "n01440764x", "01440764", "n 01440764", "n"])
def test_wnids_only_in_canonical_form(wn, bad):
    # other spellings of one synset used to become separate leaves of the same synset
    with pytest.raises(HierarchyError, match=r"Invalid wnid .*'n' and the 8-digit") as e:
        W.wordnet_hierarchy(["n01443537", bad], wn=wn)
    assert "\n" not in str(e.value)


def test_wnid_list_from_file_names_bad_line(wn, tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("n01440764\nn001440764\n")
    with pytest.raises(HierarchyError, match=r"classes.txt.*'n001440764'"):
        W.imagenet21k_hierarchy(p, wn=wn)


def test_verb_wnid_is_not_a_class(wn):
    with pytest.raises(HierarchyError, match="noun"):
        W.wordnet_hierarchy(["n01440764", "v01926329"], wn=wn)  # run.v.01
