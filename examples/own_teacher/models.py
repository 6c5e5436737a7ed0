"""Your model code: the pipeline imports this file and calls a factory to build an empty teacher,
then loads the trained weights into it. These teachers return logits; a model that returns more names
its logits with `output` in [teacher]."""

from torch import nn


class TabularTeacher(nn.Module):
    """An MLP with BatchNorm1d on 30 standardised features (breast-cancer biopsies), 2 classes."""

    def __init__(self, features: int = 30, classes: int = 2, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.body(x))


class ImageTeacher(nn.Module):
    """A small CNN with BatchNorm2d on 3x16x16 colour images, 10 classes."""

    def __init__(self, channels: int = 3, classes: int = 10):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(channels, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), nn.MaxPool2d(2), *block(64, 64),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def build_tabular_teacher():
    return TabularTeacher()


def build_image_teacher():
    return ImageTeacher()
