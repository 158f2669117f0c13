"""A demo user with 1,000 points, so a newcomer can try the API with curl at once:
``curl -u demo:demo ...`` (see README.rst)."""

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import migrations

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo"
DEMO_POINTS = 1000


def create_demo_user(apps, schema_editor):
    User = apps.get_model(settings.AUTH_USER_MODEL)
    Wallet = apps.get_model("wallet", "Wallet")
    db = schema_editor.connection.alias
    user, created = User.objects.using(db).get_or_create(
        username=DEMO_USERNAME, defaults={"password": make_password(DEMO_PASSWORD)}
    )
    if created:
        Wallet.objects.using(db).create(user=user, balance=DEMO_POINTS)


def remove_demo_user(apps, schema_editor):
    User = apps.get_model(settings.AUTH_USER_MODEL)
    User.objects.using(schema_editor.connection.alias).filter(username=DEMO_USERNAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("wallet", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(create_demo_user, remove_demo_user)]
