from rest_framework import serializers

from .models import Charge, Order


class ChargeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Charge
        fields = ["id", "amount", "description", "created_at"]
        extra_kwargs = {"amount": {"min_value": 1}}


class ChargedSerializer(ChargeSerializer):
    """A charge made, and the balance it left."""

    balance = serializers.IntegerField(read_only=True)

    class Meta(ChargeSerializer.Meta):
        fields = [*ChargeSerializer.Meta.fields, "balance"]


class WalletSerializer(serializers.Serializer):
    """The balance, and the last ten charges, newest first."""

    balance = serializers.IntegerField()
    charges = ChargeSerializer(many=True)


class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ["id", "product", "quantity", "created_at"]
        extra_kwargs = {"quantity": {"min_value": 1}}


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()
