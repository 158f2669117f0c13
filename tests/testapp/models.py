import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A custom user model with a UUID key, as many projects have (G8)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)


class Execution(models.Model):
    """One committed run of a protected handler: what the tests count."""

    label = models.CharField(max_length=100)
    key = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.label


class Item(models.Model):
    name = models.CharField(max_length=100)
    quantity = models.IntegerField(default=0)

    def __str__(self) -> str:
        return self.name
