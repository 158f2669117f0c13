import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A custom user model with a UUID key, as many projects have."""

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


class ServiceAccount(models.Model):
    """A principal that is not a user: what a custom authentication class may
    return. Its primary keys may equal a user's."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)

    is_authenticated = True

    def __str__(self) -> str:
        return self.name


class StaffUser(User):
    """A proxy of the user model: the same rows, so the same principals."""

    class Meta:
        proxy = True


class Customer(User):
    """A multi-table child of the user model: its primary key is the user's
    row, so a customer is the same principal as the user it extends."""

    plan = models.CharField(max_length=20, default="basic")
