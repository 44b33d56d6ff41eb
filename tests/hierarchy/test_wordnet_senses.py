"""The shipped class -> wnid lists map every class to the intended WordNet word sense.

A wnid of the wrong sense (trout the food instead of the fish, television the broadcasting
medium instead of the set) still builds a valid tree, so nothing else notices it. Here every
class's path in the shipped tree (default policy) must pass through a category that WordNet
knowledge says it belongs to: for CIFAR-100 the category of its CIFAR superclass, for
ImageNet-1k the well-known index ranges (the first 398 classes are the animals, 151-268 the
dog breeds, ...).
"""

import pytest

from granularity.hierarchy import wordnet as W

#: The standard CIFAR-100 superclasses (coarse labels) and their fine classes.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}

#: Superclass -> WordNet categories (any one must be on the class's path).
CIFAR100_CATEGORY = {
    "aquatic_mammals": ("mammal.n.01",),
    "fish": ("fish.n.01",),
    "flowers": ("flower.n.01",),  # angiosperm > flower
    "food_containers": ("container.n.01", "tableware.n.01"),
    "fruit_and_vegetables": ("edible_fruit.n.01",),
    "household_electrical_devices": ("device.n.01", "electronic_equipment.n.01"),
    "household_furniture": ("furniture.n.01",),
    "insects": ("insect.n.01",),
    "large_carnivores": ("carnivore.n.01",),
    "large_man-made_outdoor_things": ("structure.n.01", "way.n.06"),
    # a mixed superclass: landforms, water, weather and vegetation
    "large_natural_outdoor_scenes": (
        "geological_formation.n.01", "land.n.04", "body_of_water.n.01",
        "atmospheric_phenomenon.n.01", "vegetation.n.01",
    ),
    "large_omnivores_and_herbivores": ("mammal.n.01",),
    "medium_mammals": ("mammal.n.01",),
    "non-insect_invertebrates": ("invertebrate.n.01",),
    "people": ("person.n.01",),
    "reptiles": ("reptile.n.01",),
    "small_mammals": ("mammal.n.01",),
    "trees": ("tree.n.01",),  # woody_plant > tree
    "vehicles_1": ("conveyance.n.03",),  # vehicle.n.01 or public_transport.n.01 below it
    "vehicles_2": ("conveyance.n.03",),
}

#: Classes WordNet files elsewhere than their CIFAR superclass suggests (its only fitting sense).
CIFAR100_EXCEPTIONS = {
    "rose": "shrub.n.01",  # rose.n.01: "shrubs of the genus Rosa"
    "tulip": "bulbous_plant.n.01",  # tulip.n.01: "bulbous herbs"
    "caterpillar": "larva.n.01",  # caterpillar.n.01 sits under larva, not insect
    "lawn_mower": "garden_tool.n.01",  # no vehicle sense in WordNet
    "mushroom": "fungus.n.01",  # mushroom.n.01, the edible agaric (an organism)
    "sweet_pepper": "capsicum.n.01",  # sweet_pepper.n.01, the plant bearing the fruit
}


def expected_categories(cls: str, superclass: str) -> tuple[str, ...]:
    if cls in CIFAR100_EXCEPTIONS:
        return (CIFAR100_EXCEPTIONS[cls],)
    return CIFAR100_CATEGORY[superclass]


def misplaced_cifar100(wnids, wn) -> list[str]:
    """Classes whose path (default policy) misses every expected category."""
    names = W.resource_names("cifar100")
    bad = []
    for superclass, classes in CIFAR100_SUPERCLASSES.items():
        for cls in classes:
            path = W.ancestors(wnids[names.index(cls)], wn=wn)
            want = expected_categories(cls, superclass)
            if not set(want) & set(path):
                bad.append(f"{cls} ({path[-1]}; want {' or '.join(want)})")
    return bad


def test_superclass_table_is_cifar100(wn):
    names = W.resource_names("cifar100")
    listed = [c for classes in CIFAR100_SUPERCLASSES.values() for c in classes]
    assert len(CIFAR100_SUPERCLASSES) == 20 and sorted(listed) == sorted(names) and len(names) == 100
    assert set(CIFAR100_CATEGORY) == set(CIFAR100_SUPERCLASSES)
    for cats in [*CIFAR100_CATEGORY.values(), *[(c,) for c in CIFAR100_EXCEPTIONS.values()]]:
        for c in cats:
            wn.synset(c)  # every category is a real synset (a typo would make a check vacuous)


def test_cifar100_classes_sit_under_their_superclass_category(wn):
    assert misplaced_cifar100(W.resource_wnids("cifar100"), wn) == []


def test_the_check_catches_the_old_wrong_senses(wn):
    names = W.resource_names("cifar100")
    old = list(W.resource_wnids("cifar100"))
    for cls, wnid in [("trout", "n07794452"), ("television", "n06277280"), ("cloud", "n11439690")]:
        old[names.index(cls)] = wnid
    bad = misplaced_cifar100(old, wn)
    assert [b.split()[0] for b in bad] == ["trout", "television", "cloud"]


def test_cifar100_fixed_senses(wn):
    h = W.cifar100_wordnet_hierarchy(wn=wn)
    leaf = dict(zip(W.resource_names("cifar100"), h.leaves))
    assert h.distance(leaf["trout"], leaf["shark"]) == 8 < h.distance(leaf["trout"], leaf["apple"])
    assert h.lca(leaf["television"], leaf["telephone"]) == "electronic_equipment.n.01"
    assert "atmospheric_phenomenon.n.01" in h.ancestors(leaf["cloud"])


#: ImageNet-1k class-index ranges (half-open) and the category every class in them is under.
IMAGENET_RANGES = [
    ((0, 398), "animal.n.01"),
    ((0, 7), "fish.n.01"),  # tench .. stingray
    ((7, 25), "bird.n.01"),  # cock .. great grey owl
    ((25, 33), "amphibian.n.03"),  # fire salamander .. tailed frog
    ((33, 69), "reptile.n.01"),  # loggerhead .. sidewinder
    ((151, 269), "dog.n.01"),  # Chihuahua .. Mexican hairless
    ((281, 286), "domestic_cat.n.01"),  # tabby .. Egyptian cat
    ((286, 294), "feline.n.01"),  # cougar .. cheetah
    ((300, 327), "insect.n.01"),  # tiger beetle .. lycaenid
    ((398, 919), "artifact.n.01"),  # abacus .. crossword puzzle
    ((981, 984), "person.n.01"),  # ballplayer, groom, scuba diver
    ((991, 998), "fungus.n.01"),  # coral fungus .. bolete
]


def test_imagenet1k_classes_sit_under_known_categories(wn):
    h = W.imagenet1k_hierarchy(wn=wn)
    leaves = h.leaves
    for (lo, hi), cat in IMAGENET_RANGES:
        wn.synset(cat)
        bad = [i for i in range(lo, hi) if cat not in h.ancestors(leaves[i])]
        assert bad == [], f"{cat}: classes {bad}"
    # and the animals and dog breeds are exactly those ranges
    assert [i for i, x in enumerate(leaves) if "animal.n.01" in h.ancestors(x)] == list(range(398))
    assert [i for i, x in enumerate(leaves) if "dog.n.01" in h.ancestors(x)] == list(range(151, 269))


def test_cifar100_tree_figures_quoted_in_docs(wn):
    # docs/hierarchies.md and docs/results/hierarchies/cifar100-wordnet.txt quote these
    h = W.cifar100_wordnet_hierarchy(wn=wn)
    assert h.content_hash == "582918e036ee6e01"
    assert h.level_sizes() == [1, 2, 4, 6, 8, 11, 22, 30, 43, 51, 66, 82, 92, 97, 100, 100, 100]
    assert h.height_sizes() == [100, 78, 59, 41, 33, 23, 18, 13, 10, 8, 7, 6, 5, 4, 3, 2]
    assert h.cut_from_leaves(max_classes=20).meta["steps_up"] == 6
